"""``talos-bake kvm``: the qcow2, a libvirt domain XML and the equivalent virt-install line.

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
from bakery.image import BakeResult, to_qcow2
from bakery.progress import Progress
from bakery.qemu import kvm_usable
from platforms.image_source import image_or_bake, is_qcow2
from platforms.kvm import publish
from platforms.kvm.publish import DomainSpec, Network

PLATFORM = "kvm"


def publish_kvm(ctx: click.Context, kw: dict[str, Any], bake: Callable[[dict[str, Any]], BakeResult]) -> None:
    """Everything the command does after click parsed the options."""
    progress = Progress()
    out: Path = kw["out"].resolve()
    image = image_or_bake(ctx, kw, PLATFORM, bake)
    if is_qcow2(image):
        disk = image
    else:
        with progress.step("qcow2"):
            disk = to_qcow2(image, out / (image.stem + ".qcow2"))
    virt_type = kw["virt_type"]
    if virt_type == "auto":
        virt_type = "kvm" if kvm_usable() else "qemu"
    spec = DomainSpec(
        name=kw["name"],
        disk=disk,
        memory_mib=kw["memory"],
        vcpus=kw["vcpus"],
        firmware=kw["firmware"],
        network=Network.parse(kw["network"]),
        serial_log=kw["serial_log"].resolve() if kw["serial_log"] else None,
        domain_type=virt_type,
    )
    xml_path = out / f"{spec.name}.xml"
    write_atomic(xml_path, publish.domain_xml(spec).encode())
    if kw["define"]:
        conn = publish.connect(kw["uri"])
        try:
            publish.define(conn, spec, start=kw["start"], force=kw["force"])
        finally:
            conn.close()
        progress.say(f"domain {spec.name} defined on {kw['uri']}" + (" and started" if kw["start"] else ""))
    click.echo(str(disk))
    click.echo(str(xml_path))
    click.echo(publish.virt_install_line(spec, kw["uri"]))


def command() -> click.Command:
    """The ``kvm`` command, with the same bake options as ``talos-bake raw``."""
    from bakery.cli import bake_options, run_bake

    @click.command(PLATFORM)
    @bake_options
    @click.option(
        "--image",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Publish this image (raw or qcow2) instead of baking one.",
    )
    @click.option("--name", default="talos", show_default=True, help="libvirt domain name.")
    @click.option(
        "--memory", type=click.IntRange(min=256), default=2048, show_default=True, help="MiB of RAM."
    )
    @click.option("--vcpus", type=click.IntRange(min=1), default=2, show_default=True)
    @click.option("--firmware", type=click.Choice(publish.FIRMWARES), default="uefi", show_default=True)
    @click.option(
        "--network",
        default="network=default",
        show_default=True,
        help="Where the virtio NIC goes: network=NAME, bridge=NAME, user or none.",
    )
    @click.option(
        "--serial-log",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Also log the serial console to this file.",
    )
    @click.option(
        "--virt-type",
        type=click.Choice(["auto", "kvm", "qemu"]),
        default="auto",
        show_default=True,
        help="Domain type: auto is kvm only where KVM really works here.",
    )
    @click.option("--define", is_flag=True, help="Define the domain in libvirt.")
    @click.option("--start", is_flag=True, help="Start it too (with --define).")
    @click.option("--force", is_flag=True, help="Replace a domain of the same name.")
    @click.option("--uri", default=publish.DEFAULT_URI, show_default=True, help="libvirt connection URI.")
    @click.pass_context
    def kvm(ctx: click.Context, /, **kw: Any) -> None:
        """Publish for KVM: qcow2 + libvirt domain XML; --define [--start] puts it into libvirt."""
        if kw["start"] and not kw["define"]:
            raise click.UsageError("--start needs --define")
        try:
            publish_kvm(ctx, kw, run_bake)
        except BakeError as exc:
            raise click.ClickException(str(exc)) from None

    return kvm
