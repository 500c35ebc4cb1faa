"""talos-bake commands for bare metal: ``install`` (write the image to a disk), ``iso`` (a live ISO
that boots under BIOS and UEFI) and ``cidata`` (a NoCloud config ISO).

``install`` and ``iso`` bake the image they need with the options of ``talos-bake raw`` (platform
bare-metal; ``--config-url`` goes into the boot entry) or take ``--image PATH`` to publish one
baked before.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from bakery import cidata as cidata_iso
from bakery import install as installer
from bakery import iso as live_iso
from bakery.bake_options import BAKE_ONLY, bake_options, parse_size
from bakery.bake_run import run_bake
from bakery.errors import BakeError
from bakery.image import BakeOptions, BakeResult
from bakery.progress import Progress
from platforms.image_source import checked_image, force_platform_option, refuse_bake_options
from talos_os import output as out_fmt

PLATFORM = "bare-metal"
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def raw_image(
    ctx: click.Context,
    kw: dict[str, Any],
    bake: Callable[[dict[str, Any]], BakeResult],
    bake_only: tuple[str, ...] = BAKE_ONLY,
    *,
    refuse_platform: bool = True,
) -> Path:
    """``--image`` or a fresh bake (platform bare-metal unless --platform says otherwise). An --image
    must be a raw talos-os image; one baked for another platform is refused (``refuse_platform``,
    unless --force-platform) or only warned about."""
    image = checked_raw(ctx, kw, bake_only, refuse_platform=refuse_platform)
    return image if image is not None else bake(kw).raw


def checked_raw(
    ctx: click.Context, kw: dict[str, Any], bake_only: tuple[str, ...], *, refuse_platform: bool = True
) -> Path | None:
    """The checked ``--image`` (popped from ``kw`` with --force-platform), or None to bake."""
    image: Path | None = kw.pop("image")
    force = kw.pop("force_platform", False)
    if image is None:
        return None
    refuse_bake_options(ctx, bake_only)
    facts = checked_image(image, PLATFORM, force, refuse=refuse_platform)
    if facts.format != "raw":
        raise BakeError(f"--image {image} is {facts.format}: give the raw image (qemu-img convert -O raw)")
    return image.resolve()


def preflight_disk(disk: Path, image: Path | None, image_size: int, force: bool) -> None:
    """Every check of the target that needs no image bytes, before a bake: it exists (or is a file to
    create outside /dev), it can be opened, it is not in use, big enough and (unless --force) empty."""
    target = installer.inspect_target(disk)
    if target.exists:
        try:
            fd = os.open(target.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise BakeError(open_failed(disk, exc)) from None
        os.close(fd)
    if image is not None:
        installer.check(target, image, image_size, force)
        return
    busy = installer.uses(target)
    if busy:
        raise BakeError(f"refusing to write to {target.path}: {'; '.join(busy)}; unmount or release it first")
    if target.size and target.size < image_size:
        raise BakeError(
            f"{target.path} has {target.size >> 20} MiB but the image will need {image_size >> 20} MiB: "
            "use a larger disk or a smaller --disk-size"
        )
    found = installer.signatures(*installer.read_ends(target))
    if found and not force:
        raise BakeError(
            f"refusing to overwrite {target.path}: it holds {' and '.join(found)}; pass --force to overwrite it"
        )


def open_failed(disk: Path, exc: OSError) -> str:
    """One sentence for a target that cannot be opened (nothing was written)."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot open {disk} for writing (need root?): {exc.strerror}"
    return f"cannot open {disk} for writing: {exc.strerror or exc}"


def _bytes_progress(progress: Progress, what: str) -> Callable[[int, int], None]:
    """A progress callback that says how far it got every tenth of the way."""
    shown = [-1]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // total if total else 10
        if tenth > shown[0]:
            shown[0] = tenth
            progress.say(f"{what}: {done >> 20}/{total >> 20} MiB")

    return report


def run_install(ctx: click.Context, kw: dict[str, Any], bake: Callable[[dict[str, Any]], BakeResult]) -> None:
    """Everything ``install`` does after click parsed the options: the disk's checks come first."""
    image = checked_raw(ctx, kw, (*BAKE_ONLY, "out"))
    size = image.stat().st_size if image is not None else parse_size(kw["disk_size"])
    preflight_disk(kw["disk"], image, size, kw["force"])
    raw = image if image is not None else bake(kw).raw
    progress = Progress()
    try:
        report = installer.install(
            raw, kw["disk"], force=kw["force"], progress=_bytes_progress(progress, "writing")
        )
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            raise BakeError(open_failed(kw["disk"], exc)) from None
        raise BakeError(
            f"writing {kw['disk']} failed: {exc.strerror or exc}; check the disk and try again"
        ) from None
    out_fmt.echo(kw["output"], install_record(raw, report), report.lines(raw))


def install_record(image: Path, report: installer.Report) -> dict[str, object]:
    """What ``install`` wrote and verified, for ``-o json|yaml``."""
    return {
        "image": image.resolve(),
        "disk": report.target.path,
        "kind": "disk" if report.target.block else "file",
        "image_bytes": report.image_size,
        "data_bytes": report.data_bytes,
        "zeroed_bytes": report.zeroed_bytes,
        "sha256": report.sha256,
        "verified": True,  # install() raises when the read-back differs
        "write_seconds": round(report.write_seconds, 2),
        "verify_seconds": round(report.verify_seconds, 2),
        "backup_gpt_moved_to_bytes": report.gpt_moved_to,
        "notes": report.notes,
    }


def run_iso(ctx: click.Context, kw: dict[str, Any], bake: Callable[[dict[str, Any]], BakeResult]) -> None:
    """Everything ``iso`` does after click parsed the options (a live ISO may carry any platform's image)."""
    out: Path = kw["out"].resolve()
    if out.exists() and not out.is_dir():
        raise BakeError(f"--out {kw['out']} is a file: name a directory")
    raw = raw_image(ctx, kw, bake, refuse_platform=False)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / (raw.name.removesuffix(".raw") + ".iso")
    progress = Progress()
    with tempfile.TemporaryDirectory(dir=out, prefix=".iso-") as tmp, progress.step("live ISO"):
        sources = live_iso.sources_from_image(raw, Path(tmp))
        dest, label = live_iso.build(sources, dest, Path(tmp), epoch=BakeOptions().epoch,
                                     progress=_bytes_progress(progress, "writing ISO"))  # fmt: skip
    root = f"iso:{label}/{live_iso.ROOT_PATH}"
    progress.say(f"ISO: {dest} ({dest.stat().st_size >> 20} MiB, volume {label}, talos.root={root})")
    record = {
        "iso": dest,
        "image": raw.resolve(),
        "size_bytes": dest.stat().st_size,
        "volume": label,
        "root": root,
    }
    out_fmt.echo(kw["output"], record, str(dest))


def checked_hostname(hostname: str) -> str:
    """A host name as RFC 1123 has it (dot-separated labels of letters, digits and inner hyphens)."""
    if len(hostname) > 253 or not all(_HOST_LABEL.match(label) for label in hostname.split(".")):
        raise BakeError(
            f"hostname {hostname!r} is not valid: use letters, digits and hyphens (not first or last), "
            "up to 63 per dot-separated label"
        )
    return hostname


def checked_meta_data(path: Path) -> bytes:
    """A NoCloud meta-data file: a YAML mapping with an ``instance-id`` (and a valid local-hostname)."""
    data = path.read_bytes()
    try:
        meta = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise BakeError(
            f"--meta-data {path} is not valid YAML ({getattr(exc, 'problem', exc)}): fix it"
        ) from None
    if not isinstance(meta, dict):
        raise BakeError(f"--meta-data {path} must be a YAML mapping such as `instance-id: node-1`")
    instance = meta.get("instance-id")
    if not isinstance(instance, str | int) or not str(instance).strip():
        raise BakeError(f"--meta-data {path} has no instance-id: add `instance-id: SOMETHING-UNIQUE`")
    if "local-hostname" in meta:
        checked_hostname(str(meta["local-hostname"]))
    return data


def checked_user_data(path: Path, validate: bool) -> bytes:
    """The machine config's bytes (``-``: stdin); with ``validate``, refused unless it is a valid config."""
    data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    path = Path("stdin") if str(path) == "-" else path
    if validate:
        from talos_os.config import ConfigError  # pydantic: imported only when a config is checked
        from talos_os.config import loads as load_config

        try:
            load_config(data)
        except ConfigError as err:
            for issue in err.issues:
                click.echo(f"  {issue}", err=True)
            raise BakeError(
                f"{path} is not a valid machine config ({len(err.issues)} problem(s) above): "
                "fix it, or pass --no-validate to write it anyway"
            ) from None
    return data


def cidata_record(iso: Path, meta: bytes) -> dict[str, object]:
    """What ``cidata`` wrote, for ``-o json|yaml`` (never the config itself: it holds secrets)."""
    fields = yaml.safe_load(meta)
    return {
        "iso": iso.resolve(),
        "size_bytes": iso.stat().st_size,
        "mode": f"{stat.S_IMODE(iso.stat().st_mode):04o}",
        "volume": cidata_iso.VOLUME_ID,
        "instance_id": str(fields["instance-id"]),
        "hostname": fields.get("local-hostname"),
    }


def write_cidata(user_data: bytes, meta: bytes | None, hostname: str | None, dest: Path) -> Path:
    """The NoCloud ISO at ``dest``, mode 0600 (it carries the config's secrets)."""
    if meta is None:
        meta = cidata_iso.default_meta_data(user_data, hostname)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return cidata_iso.build_cidata(user_data, meta, dest, epoch=BakeOptions().epoch)


def run_cidata(
    user_data: Path, meta_data: Path | None, hostname: str | None, out: Path, validate: bool
) -> tuple[Path, bytes]:
    """Everything ``cidata`` does after click parsed the options: all checks, then one write; returns
    the ISO and the meta-data it holds."""
    if meta_data is not None and hostname is not None:
        raise BakeError(
            "--hostname only applies to generated meta-data: put local-hostname in your --meta-data file"
        )
    if out.exists() and not out.is_dir():
        raise BakeError(f"--out {out} is a file: name a directory (the ISO is written there as cidata.iso)")
    if out.suffix.lower() == ".iso" and not out.exists():
        raise BakeError(
            f"--out {out} names a directory, not the ISO: give e.g. --out _out (writes cidata.iso)"
        )
    if hostname is not None:
        checked_hostname(hostname)
    meta = checked_meta_data(meta_data) if meta_data is not None else None
    data = checked_user_data(user_data, validate)
    if meta is None:
        meta = cidata_iso.default_meta_data(data, hostname)
    return write_cidata(data, meta, hostname, out / "cidata.iso"), meta


def _user_errors(func: Callable[[], None]) -> None:
    """BakeError and OSError become one line for the user, never a traceback."""
    try:
        func()
    except BakeError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise click.ClickException(
            f"{exc.strerror or exc}{where}: check the path and free space, then retry"
        ) from None


INSTALL_EXAMPLES = """\b
Examples:
  talos-bake install --disk /dev/sdb --config-url http://10.0.0.1:8080/worker.yaml
  talos-bake install --disk node.img --image _out/talos-bare-metal.raw
"""
ISO_EXAMPLE = "Example: talos-bake iso --config-url http://10.0.0.1:8080/worker.yaml"
CIDATA_EXAMPLE = "Example: talos-bake cidata --user-data worker.yaml --hostname worker-1 --out _out"


def commands() -> list[click.Command]:
    """``install``, ``iso`` and ``cidata``: bare metal's publishing commands."""
    image_option = click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                                default=None, help="Publish this baked raw image instead of baking one.")  # fmt: skip

    @click.command("install", epilog=INSTALL_EXAMPLES)
    @click.option("--disk", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="Block device (e.g. /dev/sdb) or image file (created if missing, never under /dev) to write.")  # fmt: skip
    @click.option(
        "--force", is_flag=True, help="Overwrite a disk that already holds a partition table or data."
    )
    @image_option
    @force_platform_option()
    @bake_options
    @click.pass_context
    def install(ctx: click.Context, /, **kw: Any) -> None:
        """Write the image to a disk, sync and verify it by reading back (a disk in use is refused,
        one holding data too unless --force)."""
        _user_errors(lambda: run_install(ctx, kw, run_bake))

    @click.command("iso", epilog=ISO_EXAMPLE)
    @image_option
    @force_platform_option()
    @bake_options
    @click.pass_context
    def iso(ctx: click.Context, /, **kw: Any) -> None:
        """A live ISO (El Torito for BIOS and UEFI) that boots the image's kernel and root from CD."""
        _user_errors(lambda: run_iso(ctx, kw, run_bake))

    @click.command("cidata", epilog=CIDATA_EXAMPLE)
    @click.option("--user-data", required=True,
                  type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
                  help="The machine config to hand to the node (- reads stdin).")  # fmt: skip
    @click.option("--meta-data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="NoCloud meta-data: a YAML mapping with instance-id (default: instance-id from the "
                       "user-data's hash, and --hostname).")  # fmt: skip
    @click.option("--hostname", default=None, help="local-hostname in the generated meta-data.")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("_out"), show_default=True,
                  help="Directory to write cidata.iso into (mode 0600: it holds the config's secrets).")  # fmt: skip
    @click.option(
        "--no-validate", is_flag=True, help="Write the ISO even if the user-data is not a valid config."
    )
    @out_fmt.output_option()
    def cidata(
        user_data: Path,
        meta_data: Path | None,
        hostname: str | None,
        out: Path,
        no_validate: bool,
        output: str,
    ) -> None:
        """A NoCloud config ISO (volume cidata) holding user-data and meta-data."""

        def run() -> None:
            iso, meta = run_cidata(user_data, meta_data, hostname, out, not no_validate)
            out_fmt.echo(output, cidata_record(iso, meta), str(iso))

        _user_errors(run)

    for command in (install, iso):  # bare metal is what these commands are for
        for param in command.params:
            if param.name == "platform":
                param.default = PLATFORM
    return [install, iso, cidata]


def register(group: click.Group) -> None:
    """Bare metal's host half: ``install``, ``iso`` and ``cidata``."""
    for command in commands():
        group.add_command(command)
