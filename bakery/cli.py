"""talos-bake: bake images from the pinned recipes.

Every user-facing failure is a BakeError printed as one line (exit 1), never a traceback.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
from click.shell_completion import get_completion_class

from bakery.cache_cli import cache_group
from bakery.errors import BakeError
from bakery.image import DEFAULT_DISK_SIZE, BakeOptions, BakeResult, bake
from bakery.layout import min_disk_size
from bakery.lock import LOCK_PATH
from bakery.lockguard import guarded
from bakery.publish_metal import commands as metal_commands
from platforms.aws.cli import command as aws_command
from platforms.kvm.cli import command as kvm_command
from platforms.xen.cli import command as xen_command
from talos_os import __version__
from talos_os import output as out_fmt

F = TypeVar("F", bound=Callable[..., Any])
PLATFORMS = ["aws", "kvm", "xen", "bare-metal"]
_SIZE = re.compile(r"^(\d+)([KMGT]?)i?B?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``2G``, ``1536M``, ``2GiB`` -> bytes; a plain number is MiB, as Packer's disk_size is."""
    m = _SIZE.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a size: use e.g. 2G, 1536M or 2048 (MiB)")
    return int(m.group(1)) << {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]


def _check_disk_size(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Refuse an unreadable or too small --disk-size when the command line is parsed, before any bake."""
    need = min_disk_size()
    if parse_size(value) < need:
        raise click.BadParameter(f"{value} is too small for the partitions: use {-(-need >> 20)}M or more")
    return value


def _check_config_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """The node fetches only http(s) URLs, and the URL is one kernel command-line word."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise click.BadParameter(
            f"{value!r} is not an http:// or https:// URL the node can fetch (e.g. http://10.0.0.1:8080/worker.yaml)"
        )
    return value


def _check_kernel_args(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """talos.platform= and talos.config= have their own options; a second copy would contradict them."""
    for word in value.split():
        key = word.partition("=")[0]
        if key in ("talos.platform", "talos.config", "talos.root"):
            flag = {"talos.platform": "--platform", "talos.config": "--config-url"}.get(key)
            fix = f"use {flag} instead" if flag else "the bake sets it"
            raise click.BadParameter(f"{word} is set by the bake: {fix}")
    return value


def bake_options(func: F) -> F:
    """The options every command that bakes an image takes, ``-o/--output`` included."""
    options = [
        click.option("--platform", type=click.Choice(PLATFORMS), default="kvm", show_default=True,
                     help="Platform the image is for (talos.platform= on the kernel command line)."),
        click.option("--config-url", default=None, callback=_check_config_url,
                     help="Machine config URL (talos.config=) for the boot entry."),
        click.option("--extra-kernel-args", default="", callback=_check_kernel_args,
                     help="Extra kernel command-line words."),
        click.option("--disk-size", default=f"{DEFAULT_DISK_SIZE >> 30}G", show_default=True, callback=_check_disk_size,
                     help="Size of the disk image: 2G, 1536M, or a plain number of MiB (2048)."),
        click.option("--kernel-flavour", type=click.Choice(["cloud", "generic"]), default=None,
                     help="Debian kernel flavour (default: from the recipe, cloud)."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("_out"),
                     show_default=True, help="Output directory."),
        click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
                     default=Path.home() / ".cache" / "talos-bake", show_default=True, envvar="TALOS_BAKE_CACHE",
                     help="Cache of downloads and step outputs (verified by sha256)."),
        click.option("--locked", is_flag=True, help="Refuse any artifact not exactly in bake.lock."),
        click.option("--lock", "lock_path", type=click.Path(dir_okay=False, path_type=Path), default=LOCK_PATH,
                     envvar="TALOS_BAKE_LOCK", show_default=True, help="Lock file to use."),
        click.option("--update-lock", is_flag=True,
                     help="Write the versions this bake used into the lock (otherwise it is never changed)."),
        out_fmt.output_option(),  # every command that bakes prints what it made
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def options_from(kw: dict[str, Any]) -> BakeOptions:
    """BakeOptions from the click keyword arguments."""
    return BakeOptions(
        platform=kw["platform"],
        config_url=kw["config_url"],
        extra_kernel_args=kw["extra_kernel_args"],
        disk_size=parse_size(kw["disk_size"]),
        out=kw["out"],
        cache=kw["cache"],
        locked=kw["locked"],
        flavour=kw["kernel_flavour"],
        lock_path=kw["lock_path"],
    )


def run_bake(kw: dict[str, Any], formats: tuple[str, ...] = ()) -> BakeResult:
    """Bake (the tracked lock untouched unless --update-lock), turning BakeError into a one-line error."""
    try:
        bake_formats = functools.partial(bake, formats=formats)
        result, _moved = guarded(
            bake_formats, options_from(kw), update_lock=kw.get("update_lock", False), say=_warn
        )
        return result
    except BakeError as exc:
        raise click.ClickException(str(exc)) from None


def _warn(text: str) -> None:
    click.echo(f"warning: {text}", err=True)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: talos-bake raw --platform kvm --config-url http://10.0.0.1:8080/worker.yaml",
)
@click.version_option(__version__, prog_name="talos-bake")
def cli() -> None:
    """Bake talos-os images from the pinned recipes, and publish them."""


def bake_record(result: BakeResult, fmt: str = "raw") -> dict[str, object]:
    """What a bake wrote, for ``-o json|yaml``: the files (absolute paths), the raw image's sha256 and
    sizes, the platform and kernel command line, and each step's key (the manifest has the rest)."""
    data: dict[str, Any] = result.data
    record: dict[str, object] = {
        "image": result.converted.get(fmt, result.raw).resolve(),
        "format": fmt,
        "platform": data["platform"],
        "talos_os_version": data["talos_os_version"],
        "raw": result.raw.resolve(),
        "sha256": data["sha256"],
        "size_bytes": data["size_apparent"],
        "allocated_bytes": data["size_allocated"],
    }
    if fmt != "raw":
        record[f"{fmt}_bytes"] = result.converted[fmt].stat().st_size
    record.update(
        manifest=result.manifest.resolve(),
        kernel=result.kernel.resolve(),
        initramfs=result.initramfs.resolve(),
        kernel_release=data["kernel"]["release"],
        cmdline=data["cmdline"],
        source_date=out_fmt.iso_time(data["source_date_epoch"]),
        steps={name: {"key": step["key"], "cached": step["cached"]} for name, step in data["steps"].items()},
    )
    return record


@cli.command(epilog="Example: talos-bake raw --platform aws --disk-size 4G -o json")
@bake_options
def raw(**kw: Any) -> None:
    """Bake a raw GPT disk image that boots under BIOS and UEFI; prints its path (-o json: what was written)."""
    result = run_bake(kw)
    out_fmt.echo(kw["output"], bake_record(result), str(result.raw))


@cli.command(epilog="Example: talos-bake qcow2 --platform kvm --out _out")
@bake_options
def qcow2(**kw: Any) -> None:
    """Bake the raw image, then convert it to qcow2 (a cached step, like the bake's)."""
    result = run_bake(kw, formats=("qcow2",))
    out_fmt.echo(kw["output"], bake_record(result, "qcow2"), str(result.converted["qcow2"]))


@cli.command("completion", epilog='Example: eval "$(talos-bake completion bash)"')
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL."""
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.ClickException(f"click has no completion for {shell}")
    click.echo(cls(cli, {}, "talos-bake", "_TALOS_BAKE_COMPLETE").source())


cli.add_command(cache_group)
cli.add_command(kvm_command())
cli.add_command(xen_command())
cli.add_command(aws_command())
for metal_command in metal_commands():  # install, iso, cidata
    cli.add_command(metal_command)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
