"""talos-bake commands for bare metal: ``install`` (write the image to a disk), ``iso`` (a live ISO
that boots under BIOS and UEFI) and ``cidata`` (a NoCloud config ISO).

``install`` and ``iso`` bake the image they need with the options of ``talos-bake raw`` (platform
bare-metal; ``--config-url`` goes into the boot entry) or take ``--image PATH`` to publish one
baked before.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bakery import cidata as cidata_iso
from bakery import install as installer
from bakery import iso as live_iso
from bakery.errors import BakeError
from bakery.image import BakeOptions, BakeResult
from bakery.progress import Progress
from platforms.image_source import BAKE_ONLY, refuse_bake_options, warn_if_other_platform
from talos_os.config import ConfigError
from talos_os.config import load as load_config

PLATFORM = "bare-metal"


def raw_image(
    ctx: click.Context,
    kw: dict[str, Any],
    bake: Callable[[dict[str, Any]], BakeResult],
    bake_only: tuple[str, ...] = BAKE_ONLY,
) -> Path:
    """``--image`` or a fresh bake (platform bare-metal unless --platform says otherwise: a live ISO
    of a kvm image is fine); a bake option next to ``--image`` is refused."""
    image: Path | None = kw.pop("image")
    if image is None:
        return bake(kw).raw
    refuse_bake_options(ctx, bake_only)
    warn_if_other_platform(image.resolve(), PLATFORM)
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
    """Everything ``install`` does after click parsed the options."""
    raw = raw_image(ctx, kw, bake, (*BAKE_ONLY, "out"))
    progress = Progress()
    try:
        report = installer.install(
            raw, kw["disk"], force=kw["force"], progress=_bytes_progress(progress, "writing")
        )
    except OSError as exc:
        raise BakeError(
            f"writing {kw['disk']} failed: {exc.strerror or exc}; check the disk and try again"
        ) from None
    for line in report.lines(raw):
        click.echo(line)


def run_iso(ctx: click.Context, kw: dict[str, Any], bake: Callable[[dict[str, Any]], BakeResult]) -> None:
    """Everything ``iso`` does after click parsed the options."""
    raw = raw_image(ctx, kw, bake)
    out: Path = kw["out"].resolve()
    out.mkdir(parents=True, exist_ok=True)
    dest = out / (raw.name.removesuffix(".raw") + ".iso")
    progress = Progress()
    with tempfile.TemporaryDirectory(dir=out, prefix=".iso-") as tmp, progress.step("live ISO"):
        sources = live_iso.sources_from_image(raw, Path(tmp))
        dest, label = live_iso.build(sources, dest, Path(tmp), epoch=BakeOptions().epoch,
                                     progress=_bytes_progress(progress, "writing ISO"))  # fmt: skip
    progress.say(f"ISO: {dest} ({dest.stat().st_size >> 20} MiB, volume {label}, talos.root=iso:{label}/{live_iso.ROOT_PATH})")  # fmt: skip
    click.echo(str(dest))


def run_cidata(
    user_data: Path, meta_data: Path | None, hostname: str | None, out: Path, validate: bool
) -> Path:
    """Everything ``cidata`` does after click parsed the options."""
    if meta_data is not None and hostname is not None:
        raise BakeError(
            "--hostname only applies to generated meta-data: put local-hostname in your --meta-data file"
        )
    if validate:
        try:
            load_config(user_data)
        except ConfigError as err:
            for issue in err.issues:
                click.echo(f"  {issue}", err=True)
            raise BakeError(
                f"{user_data} is not a valid machine config ({len(err.issues)} problem(s) above): "
                "fix it, or pass --no-validate to write it anyway"
            ) from None
    data = user_data.read_bytes()
    meta = meta_data.read_bytes() if meta_data else cidata_iso.default_meta_data(data, hostname)
    dest = out / "cidata.iso" if out.is_dir() else out
    dest.parent.mkdir(parents=True, exist_ok=True)
    return cidata_iso.build_cidata(data, meta, dest, epoch=BakeOptions().epoch)


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


def commands() -> list[click.Command]:
    """``install``, ``iso`` and ``cidata``; built when bakery.cli registers them (bakery.cli imports this
    module, so its ``bake_options`` are imported here, not at import time)."""
    from bakery.cli import bake_options, run_bake

    image_option = click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                                default=None, help="Publish this baked raw image instead of baking one.")  # fmt: skip

    @click.command("install")
    @click.option("--disk", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="Block device (e.g. /dev/sdb) or image file (created if missing) to write.")  # fmt: skip
    @click.option(
        "--force", is_flag=True, help="Overwrite a disk that already holds a partition table or data."
    )
    @image_option
    @bake_options
    @click.pass_context
    def install(ctx: click.Context, /, **kw: Any) -> None:
        """Write the image to a disk, sync and verify it by reading back (a disk in use is refused,
        one holding data too unless --force)."""
        _user_errors(lambda: run_install(ctx, kw, run_bake))

    @click.command("iso")
    @image_option
    @bake_options
    @click.pass_context
    def iso(ctx: click.Context, /, **kw: Any) -> None:
        """A live ISO (El Torito for BIOS and UEFI) that boots the image's kernel and root from CD."""
        _user_errors(lambda: run_iso(ctx, kw, run_bake))

    @click.command("cidata")
    @click.option("--user-data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="The machine config to hand to the node.")  # fmt: skip
    @click.option("--meta-data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="NoCloud meta-data (default: instance-id from the user-data's hash, and --hostname).")  # fmt: skip
    @click.option("--hostname", default=None, help="local-hostname in the generated meta-data.")
    @click.option("--out", type=click.Path(path_type=Path), default=Path("_out/cidata.iso"), show_default=True,
                  help="ISO file to write (or a directory to write cidata.iso into).")  # fmt: skip
    @click.option(
        "--no-validate", is_flag=True, help="Write the ISO even if the user-data is not a valid config."
    )
    def cidata(
        user_data: Path, meta_data: Path | None, hostname: str | None, out: Path, no_validate: bool
    ) -> None:
        """A NoCloud config ISO (volume cidata) holding user-data and meta-data."""

        def run() -> None:
            click.echo(str(run_cidata(user_data, meta_data, hostname, out, not no_validate)))

        _user_errors(run)

    for command in (install, iso):  # bare metal is what these commands are for
        for param in command.params:
            if param.name == "platform":
                param.default = PLATFORM
    return [install, iso, cidata]
