"""talos-bake commands for bare metal: ``install`` (write the image to a disk), ``iso`` (a live ISO
that boots under BIOS and UEFI) and ``cidata`` (a NoCloud config ISO).

``install`` and ``iso`` bake the image they need with the options of ``talos-bake raw`` (platform
bare-metal; ``--config-url`` goes into the boot entry) or take ``--image PATH`` to publish one
baked before.

Bare metal's host half: ``register`` adds the commands to ``talos-bake`` (the plugin names this module).
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bakery import cidata as cidata_iso
from bakery import install as installer
from bakery import iso as live_iso
from bakery.bake_options import BAKE_ONLY, bake_options, parse_size
from bakery.bake_run import run_bake
from bakery.errors import BakeError
from bakery.image import BakeOptions, BakeResult
from bakery.progress import Progress
from platforms.bare_metal import publish
from platforms.image_source import checked_image, force_platform_option, refuse_bake_options, request_from
from talos_os import output as out_fmt

PLATFORM = "bare-metal"


@dataclass(frozen=True)
class InstallRequest:
    """What ``talos-bake install`` was asked for, typed once from click's options (the bake options and
    --image stay with the shared bake-or-take path)."""

    disk: Path
    force: bool
    disk_size: str  # a bake option: sizes the target check before a bake
    output: str


@dataclass(frozen=True)
class IsoRequest:
    """What ``talos-bake iso`` was asked for (besides the bake options and --image)."""

    out: Path
    output: str


@dataclass(frozen=True)
class CidataRequest:
    """What ``talos-bake cidata`` was asked for: it never bakes."""

    user_data: Path
    meta_data: Path | None
    hostname: str | None
    out: Path
    validate: bool
    output: str

    @classmethod
    def from_options(cls, kw: dict[str, Any]) -> CidataRequest:
        return request_from(cls, {**kw, "validate": not kw["no_validate"]})


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
    req = request_from(InstallRequest, kw)
    image = checked_raw(ctx, kw, (*BAKE_ONLY, "out"))
    size = image.stat().st_size if image is not None else parse_size(req.disk_size)
    publish.preflight_disk(req.disk, image, size, req.force)
    raw = image if image is not None else bake(kw).raw
    progress = Progress()
    try:
        report = installer.install(
            raw, req.disk, force=req.force, progress=_bytes_progress(progress, "writing")
        )
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            raise BakeError(publish.open_failed(req.disk, exc)) from None
        raise BakeError(
            f"writing {req.disk} failed: {exc.strerror or exc}; check the disk and try again"
        ) from None
    out_fmt.echo(req.output, publish.install_record(raw, report), report.lines(raw))


def run_iso(ctx: click.Context, kw: dict[str, Any], bake: Callable[[dict[str, Any]], BakeResult]) -> None:
    """Everything ``iso`` does after click parsed the options (a live ISO may carry any platform's image)."""
    req = request_from(IsoRequest, kw)
    out: Path = req.out.resolve()
    if out.exists() and not out.is_dir():
        raise BakeError(f"--out {req.out} is a file: name a directory")
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
    out_fmt.echo(req.output, record, str(dest))


def run_cidata(req: CidataRequest) -> tuple[Path, bytes]:
    """Everything ``cidata`` does after click parsed the options: all checks, then one write; returns
    the ISO and the meta-data it holds."""
    meta_data, hostname, out = req.meta_data, req.hostname, req.out
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
        publish.checked_hostname(hostname)
    meta = publish.checked_meta_data(meta_data) if meta_data is not None else None
    data = publish.checked_user_data(req.user_data, req.validate)
    if meta is None:
        meta = cidata_iso.default_meta_data(data, hostname)
    return publish.write_cidata(data, meta, hostname, out / "cidata.iso"), meta


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
    def cidata(**kw: Any) -> None:
        """A NoCloud config ISO (volume cidata) holding user-data and meta-data."""

        def run() -> None:
            req = CidataRequest.from_options(kw)
            iso, meta = run_cidata(req)
            out_fmt.echo(req.output, publish.cidata_record(iso, meta), str(iso))

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
