"""``talos-bake xen``: the domain's disk plus xl configs for HVM and PV (pygrub), and the vm-data how-to.

The configs point at ``--out/NAME.raw``, a sparse copy of the image: the guest writes its disk
(EPHEMERAL is formatted on first boot), and that must not change the baked image, as with kvm's
qcow2. Every input is checked before the bake or the copy.

Xen's host half: ``register`` adds the command to ``talos-bake`` (the plugin names this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bakery.bake_options import bake_options
from bakery.bake_run import run_bake
from bakery.errors import BakeError
from bakery.image import BakeResult
from bakery.progress import Progress
from bakery.tools import run
from platforms.image_source import (
    drop_platform_option,
    force_platform_option,
    image_or_bake,
    preflight_image,
    request_from,
)
from platforms.xen import publish
from platforms.xen.publish import XenDomain
from talos_os import output as out_fmt
from talos_os.lib.atomic import atomic_path, write_atomic

PLATFORM = "xen"


@dataclass(frozen=True)
class XenRequest:
    """What ``talos-bake xen`` was asked for, typed once from click's options (the bake options and
    --image stay with the shared bake-or-take path)."""

    name: str
    memory_mib: int
    vcpus: int
    bridge: str
    firmware: str
    vm_data_url: str | None
    out: Path
    output: str

    @classmethod
    def from_options(cls, kw: dict[str, Any]) -> XenRequest:
        return request_from(cls, kw, memory_mib="memory")


def preflight(ctx: click.Context, kw: dict[str, Any], req: XenRequest) -> None:
    """Check every input before any bake or copy."""
    out = req.out
    if out.exists() and not out.is_dir():
        raise BakeError(f"--out {out} is a file: name a directory")
    if "," in str(out.resolve()):
        raise BakeError(f"--out {out} holds a comma, which xl's disk syntax cannot carry: choose another")
    facts = preflight_image(ctx, kw, PLATFORM)
    if facts is not None and facts.format == "qcow2":
        raise BakeError(f"{kw['image']} is qcow2, which pygrub cannot read: publish the raw image instead")


def domain_disk(image: Path, dest: Path, progress: Progress) -> Path:
    """A sparse copy of ``image`` at ``dest`` (written under a temporary name, then renamed)."""
    if dest.exists() and dest.samefile(image):
        raise BakeError(
            f"--name would make the domain's disk {dest}, which is the image itself: pick another --name"
        )
    with progress.step(f"copying the image to {dest.name}"), atomic_path(dest) as tmp:
        run(["cp", "--sparse=always", "--reflink=auto", image, tmp], what="cp")
    return dest


def publish_xen(ctx: click.Context, kw: dict[str, Any], bake: Callable[[dict[str, Any]], BakeResult]) -> None:
    """Everything the command does after click parsed the options."""
    req = XenRequest.from_options(kw)
    preflight(ctx, kw, req)
    progress = Progress()
    out = req.out.resolve()
    image = image_or_bake(ctx, kw, PLATFORM, bake)
    disk = domain_disk(image, out / f"{req.name}.raw", progress)
    domain = XenDomain(
        name=req.name,
        disk=disk,
        memory_mib=req.memory_mib,
        vcpus=req.vcpus,
        bridge=req.bridge,
        firmware=req.firmware,
    )
    hvm = out / f"{domain.name}-hvm.cfg"
    pv = out / f"{domain.name}-pv.cfg"
    howto = out / f"{domain.name}-vm-data.txt"
    write_atomic(hvm, publish.hvm_config(domain).encode())
    write_atomic(pv, publish.pv_config(domain).encode())
    text = publish.vm_data_howto(domain.name, str(pv), req.vm_data_url)
    write_atomic(howto, text.encode())
    record = {
        "name": domain.name,
        "image": image,
        "disk": disk,
        "hvm_config": hvm,
        "pv_config": pv,
        "vm_data_howto": howto,
        "memory_mib": domain.memory_mib,
        "vcpus": domain.vcpus,
        "bridge": domain.bridge,
        "firmware": domain.firmware,
    }
    out_fmt.echo(req.output, record, [str(path) for path in (disk, hvm, pv, howto)])
    click.echo(text, err=True, nl=False)


EXAMPLES = """\b
Examples:
  talos-bake xen --config-url http://10.0.0.1:8080/worker.yaml
  talos-bake xen --image _out/talos-xen.raw --name worker-1 --bridge xenbr0 -o yaml
"""


def command() -> click.Command:
    """The ``xen`` command, with the bake options of ``talos-bake raw`` (it always bakes for xen)."""

    @click.command(PLATFORM, epilog=EXAMPLES)
    @bake_options
    @click.option(
        "--image",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Publish this raw talos-os image (baked for xen) instead of baking one.",
    )
    @force_platform_option()
    @click.option(
        "--name",
        default="talos",
        show_default=True,
        help="Xen domain name; its disk is --out/NAME.raw, a copy of the image.",
    )
    @click.option(
        "--memory", type=click.IntRange(min=256), default=2048, show_default=True, help="MiB of RAM."
    )
    @click.option(
        "--vcpus",
        type=click.IntRange(min=1),
        default=2,
        show_default=True,
        help="Virtual CPUs of the domain.",
    )
    @click.option("--bridge", default="xenbr0", show_default=True, help="dom0 bridge for the vif.")
    @click.option(
        "--firmware",
        type=click.Choice(publish.FIRMWARES),
        default="bios",
        show_default=True,
        help="HVM firmware.",
    )
    @click.option("--vm-data-url", default=None, help="Config URL to show in the xenstore vm-data how-to.")
    @click.pass_context
    def xen(ctx: click.Context, /, **kw: Any) -> None:
        """Publish for Xen: the domain's disk + xl configs (HVM, PV via pygrub) + how to pass the config URL."""
        try:
            publish_xen(ctx, kw, run_bake)
        except BakeError as exc:
            raise click.ClickException(str(exc)) from None

    return drop_platform_option(xen, PLATFORM)


def register(group: click.Group) -> None:
    """This platform's host half: its ``talos-bake`` command."""
    group.add_command(command())
