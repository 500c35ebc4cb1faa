"""talos-bake: bake images from the pinned recipes.

Every user-facing failure is a BakeError printed as one line (exit 1), never a traceback.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import get_completion_class

from bakery import upgrade_bundle
from bakery.bake_options import bake_options, options_from, parse_size, profile_option
from bakery.bake_run import run_bake
from bakery.cache_cli import cache_group
from bakery.image import BakeOptions, BakeResult
from talos_os import __version__, plugins
from talos_os import output as out_fmt

# Re-exported: the bake's options and runner are declared in bakery.bake_options and bakery.bake_run.
__all__ = ["BakeOptions", "bake_options", "cli", "main", "options_from", "parse_size", "run_bake"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: talos-bake raw --platform kvm --config-url http://10.0.0.1:8080/worker.yaml",
)
@click.version_option(__version__, prog_name="talos-bake")
@profile_option()
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
cli.add_command(upgrade_bundle.command(bake_options, run_bake))
for plugin in plugins.discover().values():  # each platform's host half adds its publishing commands
    host = plugin.load_host()
    if host is not None:
        host.register(cli)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
