"""``talos-bake kvm``: the qcow2, a libvirt domain XML and the equivalent virt-install line.

Every input is checked first (``preflight``: the network, the --image, the config, the libvirt URI
and what it must hold), so a mistake costs no bake and no conversion and leaves nothing in --out.

KVM's host half: ``register`` adds the command to ``talos-bake`` (the plugin names this module).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from bakery.bake_options import bake_options
from bakery.bake_run import run_bake
from bakery.errors import BakeError
from bakery.image import BakeResult, to_qcow2
from bakery.progress import Progress
from bakery.qemu import kvm_usable
from platforms.image_source import (
    drop_platform_option,
    force_platform_option,
    image_or_bake,
    is_qcow2,
    preflight_image,
    request_from,
)
from platforms.kvm import publish
from platforms.kvm.publish import DomainSpec, Network
from talos_os import output as out_fmt
from talos_os.lib.atomic import write_atomic

PLATFORM = "kvm"


@dataclass(frozen=True)
class KvmRequest:
    """What ``talos-bake kvm`` was asked for, typed once from click's options (the bake options and
    --image stay with the shared bake-or-take path)."""

    name: str
    memory_mib: int
    vcpus: int
    firmware: str
    network: Network
    serial_log: Path | None
    virt_type: str  # auto, kvm or qemu
    config: Path | None
    define: bool
    start: bool
    force: bool
    uri: str
    out: Path
    output: str

    @classmethod
    def from_options(cls, kw: dict[str, Any]) -> KvmRequest:
        return request_from(cls, {**kw, "network": Network.parse(kw["network"])}, memory_mib="memory")


@dataclass
class Checked:
    """What preflight established, for the steps after the bake."""

    network: Network
    virt_type: str
    config: bytes | None = None
    conn: Any = None  # an open libvirt connection with --define


def _libvirt_network_exists(conn: Any, name: str) -> bool:
    try:
        conn.networkLookupByName(name)
    except Exception:  # libvirt.libvirtError; the module is only imported by publish
        return False
    return True


def preflight(ctx: click.Context, kw: dict[str, Any], req: KvmRequest, progress: Progress) -> Checked:
    """Check every input before any bake, conversion or write."""
    if req.out.exists() and not req.out.is_dir():
        raise BakeError(f"--out {req.out} is a file: name a directory")
    if req.serial_log is not None and not req.serial_log.resolve().parent.is_dir():
        raise BakeError(f"--serial-log {req.serial_log}: its directory does not exist; create it first")
    preflight_image(ctx, kw, PLATFORM)
    config = None
    if req.config is not None:
        from platforms.bare_metal.publish import checked_user_data

        config = checked_user_data(req.config, validate=True)
    virt_type = req.virt_type
    if virt_type == "auto":
        virt_type = "kvm" if kvm_usable() else "qemu"
    checked = Checked(req.network, virt_type, config)
    if req.define:
        checked.conn = publish.connect(req.uri)
        try:
            _check_libvirt(checked.conn, req)
        except BaseException:
            checked.conn.close()
            raise
    if req.virt_type == "auto":  # the XML carries this machine's answer: say so
        progress.say(
            f"--virt-type auto: this machine {'has a usable' if virt_type == 'kvm' else 'has no usable'} "
            f"KVM, so the domain type is {virt_type}; pass --virt-type for the machine that will run it"
        )
    return checked


def _check_libvirt(conn: Any, req: KvmRequest) -> None:
    """What --define needs from libvirt: no domain of that name (unless --force), the network."""
    uri, network = req.uri, req.network
    try:
        conn.lookupByName(req.name)
        exists = True
    except Exception:  # libvirt.libvirtError: no such domain
        exists = False
    if exists and not req.force:
        raise BakeError(
            f"a domain named {req.name!r} already exists on {uri}: pass --force to replace it "
            "or choose another --name"
        )
    if network.kind == "network" and not _libvirt_network_exists(conn, network.source or ""):
        raise BakeError(
            f"--network {network}: libvirt at {uri} has no network {network.source!r}: create it "
            "(`virsh net-define` + `virsh net-start`), or pass --network user"
        )
    local = not urlsplit(uri).netloc  # qemu:///system is here; qemu+ssh://host/system is not
    if network.kind == "bridge" and local and not Path("/sys/class/net", network.source or "").exists():
        raise BakeError(
            f"--network {network}: this machine has no bridge {network.source!r}: create it or pass --network user"
        )


@contextlib.contextmanager
def _closing(conn: Any) -> Iterator[None]:
    try:
        yield
    finally:
        if conn is not None:
            conn.close()


def publish_kvm(ctx: click.Context, kw: dict[str, Any], bake: Callable[[dict[str, Any]], BakeResult]) -> None:
    """Everything the command does after click parsed the options."""
    req = KvmRequest.from_options(kw)
    progress = Progress()
    checked = preflight(ctx, kw, req, progress)
    with _closing(checked.conn):
        out = req.out.resolve()
        image = image_or_bake(ctx, kw, PLATFORM, bake)
        if is_qcow2(image):
            disk = image
        else:
            with progress.step("qcow2"):
                disk = to_qcow2(image, out / (image.stem + ".qcow2"))
        cidata = None
        if checked.config is not None:
            from platforms.bare_metal.publish import write_cidata

            cidata = write_cidata(checked.config, None, None, out / f"{req.name}-cidata.iso")
        spec = DomainSpec(
            name=req.name,
            disk=disk,
            memory_mib=req.memory_mib,
            vcpus=req.vcpus,
            firmware=req.firmware,
            network=checked.network,
            serial_log=req.serial_log.resolve() if req.serial_log else None,
            domain_type=checked.virt_type,
            cidata=cidata,
        )
        xml_path = out / f"{spec.name}.xml"
        write_atomic(xml_path, publish.domain_xml(spec).encode())
        if checked.conn is not None:
            publish.define(checked.conn, spec, start=req.start, force=req.force)
            progress.say(f"domain {spec.name} defined on {req.uri}" + (" and started" if req.start else ""))
    line = publish.virt_install_line(spec, req.uri)
    record = {
        "name": spec.name,
        "disk": disk,
        "cidata": cidata,
        "xml": xml_path,
        "virt_install": line,
        "domain_type": spec.domain_type,
        "memory_mib": spec.memory_mib,
        "vcpus": spec.vcpus,
        "firmware": spec.firmware,
        "network": str(spec.network),
        "uri": req.uri,
        "defined": checked.conn is not None,
        "started": checked.conn is not None and bool(req.start),
    }
    text = [str(disk), *([str(cidata)] if cidata is not None else []), str(xml_path), line]
    out_fmt.echo(req.output, record, text)


EXAMPLES = """\b
Examples:
  talos-bake kvm --config-url http://10.0.0.1:8080/worker.yaml
  talos-bake kvm --image _out/talos-kvm.raw --config worker.yaml --define --start
  talos-bake kvm --image _out/talos-kvm.raw --name n1 -o json
"""


def command() -> click.Command:
    """The ``kvm`` command, with the bake options of ``talos-bake raw`` (it always bakes for kvm)."""

    @click.command(PLATFORM, epilog=EXAMPLES)
    @bake_options
    @click.option(
        "--image",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Publish this talos-os image (raw or qcow2, baked for kvm) instead of baking one.",
    )
    @force_platform_option()
    @click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
        default=None,
        help="Machine config (- reads stdin) to attach as a NoCloud cidata CD (--out/NAME-cidata.iso, 0600).",
    )
    @click.option("--name", default="talos", show_default=True, help="libvirt domain name.")
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
    @click.option(
        "--firmware",
        type=click.Choice(publish.FIRMWARES),
        default="uefi",
        show_default=True,
        help="Firmware the domain boots with (UEFI without Secure Boot, or SeaBIOS).",
    )
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
        help="Domain type: auto is kvm only where KVM works on this machine (the choice is printed).",
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

    return drop_platform_option(kvm, PLATFORM)


def register(group: click.Group) -> None:
    """This platform's host half: its ``talos-bake`` command."""
    group.add_command(command())
