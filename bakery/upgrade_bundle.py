"""The upgrade bundle as a bake step (``upgrade``): the image's kernel, initramfs and root squashfs
with a manifest (version, architecture, each part's sha256), in one reproducible file.

Every bake can produce it as ``_out/talos-<platform>.upgrade`` (``talos-bake upgrade-bundle``, or
``bake(opts, formats=("upgrade",))``). It reads only the kernel, initramfs and squashfs steps, so a
bake that already made them writes the bundle in about a second, and an unchanged one not at all.
``--extra-kernel-args`` become the bundle's kernel arguments: the node puts them into the new slot's
boot entry. The format is :mod:`talos_os.upgrade.bundle`'s (the node reads it with that module).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from bakery import steps
from bakery.options import os_version
from bakery.pipeline import Step
from bakery.stepcache import Entry, Staging
from talos_os import output as out_fmt
from talos_os.upgrade import bundle

OUTPUT = "talos.upgrade"  # in the step's output; copied out as talos-<platform>.upgrade
ARCH = "x86_64"  # the kernel flavours the recipes know are amd64


def _params(ctx: steps.BakeContext) -> object:
    return {
        "version": os_version(),
        "arch": ARCH,
        "kernel_args": ctx.opts.extra_kernel_args.strip(),
        "epoch": ctx.opts.epoch,
    }


def make_bundle(ctx: steps.BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    """Write the bundle (manifest first, then kernel, initramfs, root squashfs)."""
    kernel = inputs["kernel"]
    files = {
        "kernel": steps.vmlinuz(kernel),
        "initramfs": inputs["initramfs"].out / "initramfs.zst",
        "root": inputs["squashfs"].out / "root.sqsh",
    }
    manifest = bundle.manifest_for(
        os_version(), ARCH, str(kernel.meta["release"]), ctx.opts.extra_kernel_args.strip(), files
    )
    out = staging.out / OUTPUT
    with open(out, "wb") as f:
        bundle.create(f, manifest, files, ctx.opts.epoch)
    staging.meta.update(
        version=manifest.version,
        bytes=out.stat().st_size,
        sha256=bundle.file_sha256(out),
        parts={name: {"size": p.size, "sha256": p.sha256} for name, p in manifest.parts.items()},
    )


STEP: Step[steps.BakeContext] = Step(
    "upgrade",
    make_bundle,
    needs=("kernel", "initramfs", "squashfs"),
    params=_params,
    code=("bakery.upgrade_bundle", "talos_os.upgrade.bundle"),
)
steps.register(STEP)


def command(bake_options: Callable[[Any], Any], run_bake: Callable[..., Any]) -> click.Command:
    """``talos-bake upgrade-bundle``: the bake's options (cli.py passes its decorator and runner in)."""

    @click.command(
        "upgrade-bundle",
        epilog="Example: TALOS_VERSION=0.2.0 talos-bake upgrade-bundle --platform kvm -o json   "
        "(then: osctl upgrade --image _out/talos-kvm.upgrade)",
    )
    @bake_options
    def upgrade_bundle(**kw: Any) -> None:
        """Bake, then write the upgrade bundle osctl upgrade installs: _out/talos-<platform>.upgrade.

        The version is $TALOS_VERSION when set, else the source's; --extra-kernel-args go with the
        bundle into the new slot's boot entry.
        """
        result = run_bake(kw, formats=("upgrade",))
        path = Path(result.converted["upgrade"]).resolve()
        record = record_of(path)
        out_fmt.echo(kw["output"], record, str(path))

    return upgrade_bundle


def record_of(path: Path) -> dict[str, object]:
    """What ``-o json|yaml`` prints about a bundle."""
    manifest = bundle.describe(path)
    return {
        "bundle": path,
        "version": manifest.version,
        "arch": manifest.arch,
        "kernel_release": manifest.kernel_release,
        "kernel_args": manifest.kernel_args,
        "bytes": path.stat().st_size,
        "sha256": bundle.file_sha256(path),
        "parts": {name: {"bytes": p.size, "sha256": p.sha256} for name, p in manifest.parts.items()},
    }
