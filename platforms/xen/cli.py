"""``talos-bake xen``: the raw image plus xl configs for HVM and PV (pygrub), and the vm-data how-to.

``command()`` builds the click command when bakery.cli registers it: this module imports
bakery.cli's ``bake_options`` then, not at import time, because bakery.cli imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bakery.atomic import write_atomic
from bakery.errors import BakeError
from bakery.image import BakeResult
from platforms.image_source import image_or_bake, is_qcow2
from platforms.xen import publish
from platforms.xen.publish import XenDomain

PLATFORM = "xen"


def publish_xen(ctx: click.Context, kw: dict[str, Any], bake: Callable[[dict[str, Any]], BakeResult]) -> None:
    """Everything the command does after click parsed the options."""
    out: Path = kw["out"].resolve()
    image = image_or_bake(ctx, kw, PLATFORM, bake)
    if is_qcow2(image):
        raise BakeError(f"{image} is qcow2, which pygrub cannot read: publish the raw image instead")
    domain = XenDomain(
        name=kw["name"],
        disk=image,
        memory_mib=kw["memory"],
        vcpus=kw["vcpus"],
        bridge=kw["bridge"],
        firmware=kw["firmware"],
    )
    hvm = out / f"{domain.name}-hvm.cfg"
    pv = out / f"{domain.name}-pv.cfg"
    howto = out / f"{domain.name}-vm-data.txt"
    write_atomic(hvm, publish.hvm_config(domain).encode())
    write_atomic(pv, publish.pv_config(domain).encode())
    text = publish.vm_data_howto(domain.name, str(pv), kw["vm_data_url"])
    write_atomic(howto, text.encode())
    for path in (image, hvm, pv, howto):
        click.echo(str(path))
    click.echo(text, err=True, nl=False)


def command() -> click.Command:
    """The ``xen`` command, with the same bake options as ``talos-bake raw``."""
    from bakery.cli import bake_options, run_bake

    @click.command(PLATFORM)
    @bake_options
    @click.option(
        "--image",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Publish this raw image instead of baking one.",
    )
    @click.option("--name", default="talos", show_default=True, help="Xen domain name.")
    @click.option(
        "--memory", type=click.IntRange(min=256), default=2048, show_default=True, help="MiB of RAM."
    )
    @click.option("--vcpus", type=click.IntRange(min=1), default=2, show_default=True)
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
        """Publish for Xen: raw image + xl configs (HVM, PV via pygrub) + how to pass the config URL."""
        try:
            publish_xen(ctx, kw, run_bake)
        except BakeError as exc:
            raise click.ClickException(str(exc)) from None

    return xen
