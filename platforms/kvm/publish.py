"""KVM host half: a libvirt domain for the qcow2 image, defined (and started) with libvirt-python.

The domain XML and the equivalent ``virt-install --import`` line are pure functions of a
``DomainSpec`` (unit-tested); only ``define`` talks to libvirtd. Devices are virtio (disk, net,
rng) and the serial port is the console, so the node's boot log is on ``virsh console`` and, with
``serial_log``, in a file (written by virtlogd).
"""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.errors import BakeError

FIRMWARES = ("uefi", "bios")
DEFAULT_URI = "qemu:///system"
OSINFO = "linux2022"  # virt-install wants an OS; the generic 2022 Linux entry fits a 6.1 kernel


@dataclass(frozen=True)
class Network:
    """Where the virtio NIC goes, in virt-install's words: ``network=NAME``, ``bridge=NAME``, ``user``, ``none``."""

    kind: str
    source: str | None = None

    @classmethod
    def parse(cls, text: str) -> Network:
        kind, _, source = text.strip().partition("=")
        if kind in ("network", "bridge") and source:
            return cls(kind, source)
        if kind in ("user", "none") and not source:
            return cls(kind)
        raise BakeError(f"network {text!r} is not understood: use network=NAME, bridge=NAME, user or none")

    def __str__(self) -> str:
        return f"{self.kind}={self.source}" if self.source else self.kind


@dataclass(frozen=True)
class DomainSpec:
    """Everything the domain depends on; paths are absolute so libvirtd finds them."""

    name: str
    disk: Path
    disk_format: str = "qcow2"
    memory_mib: int = 2048
    vcpus: int = 2
    firmware: str = "uefi"
    network: Network = Network("network", "default")
    serial_log: Path | None = None
    domain_type: str = "qemu"  # "kvm" only where KVM really works (bakery.qemu.kvm_usable)
    cidata: Path | None = None  # a NoCloud config ISO, attached as a CD

    def __post_init__(self) -> None:
        if self.firmware not in FIRMWARES:
            raise BakeError(f"unknown firmware {self.firmware!r}: use uefi or bios")
        paths = [self.disk, *(p for p in (self.serial_log, self.cidata) if p is not None)]
        if not all(p.is_absolute() for p in paths):
            raise BakeError("the disk, cidata and serial log paths of a libvirt domain must be absolute")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: DomainSpec) -> str:
    """The libvirt domain definition (q35; UEFI without Secure Boot, or SeaBIOS)."""
    dom = ET.Element("domain", type=spec.domain_type)
    _sub(dom, "name", spec.name)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_el = _sub(dom, "os", **({"firmware": "efi"} if spec.firmware == "uefi" else {}))
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    if spec.firmware == "uefi":  # our GRUB is not signed: pick firmware without Secure Boot
        fw = _sub(os_el, "firmware")
        _sub(fw, "feature", enabled="no", name="secure-boot")
        _sub(fw, "feature", enabled="no", name="enrolled-keys")
    _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "cpu", mode="host-passthrough" if spec.domain_type == "kvm" else "maximum")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=spec.disk_format)
    _sub(disk, "source", file=str(spec.disk))
    _sub(disk, "target", dev="vda", bus="virtio")
    if spec.cidata is not None:  # q35 has no IDE: the CD sits on SATA
        cd = _sub(devices, "disk", type="file", device="cdrom")
        _sub(cd, "driver", name="qemu", type="raw")
        _sub(cd, "source", file=str(spec.cidata))
        _sub(cd, "target", dev="sda", bus="sata")
        _sub(cd, "readonly")
    if spec.network.kind != "none":
        nic = _sub(devices, "interface", type=spec.network.kind)
        if spec.network.source:
            _sub(nic, "source", **{spec.network.kind: spec.network.source})
        _sub(nic, "model", type="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    if spec.serial_log is not None:
        _sub(serial, "log", file=str(spec.serial_log), append="off")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def virt_install_argv(spec: DomainSpec, uri: str = DEFAULT_URI) -> list[str]:
    """The same domain made by ``virt-install --import`` (no console attached: it returns at once)."""
    boot = "hd"
    if spec.firmware == "uefi":
        boot = "uefi,firmware.feature0.name=secure-boot,firmware.feature0.enabled=no"
    serial = "pty" + (f",log.file={spec.serial_log},log.append=off" if spec.serial_log else "")
    network = "none" if spec.network.kind == "none" else f"{spec.network},model=virtio"
    cidata = ["--disk", f"path={spec.cidata},device=cdrom,bus=sata"] if spec.cidata is not None else []
    return [
        "virt-install", "--connect", uri, "--name", spec.name, "--virt-type", spec.domain_type,
        "--machine", "q35", "--memory", str(spec.memory_mib), "--vcpus", str(spec.vcpus),
        "--cpu", "host-passthrough" if spec.domain_type == "kvm" else "mode=maximum",
        "--boot", boot, "--import", "--disk", f"path={spec.disk},format={spec.disk_format},bus=virtio", *cidata,
        "--network", network, "--rng", "/dev/urandom", "--graphics", "none",
        "--serial", serial, "--osinfo", OSINFO, "--noautoconsole",
    ]  # fmt: skip


def virt_install_line(spec: DomainSpec, uri: str = DEFAULT_URI) -> str:
    """``virt_install_argv`` quoted for a shell."""
    return shlex.join(virt_install_argv(spec, uri))


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise BakeError(
            "libvirt-python is not installed: install the host extra with `pip install -e '.[host]'`"
        ) from None
    return libvirt


def connect(uri: str) -> Any:
    """A read-write libvirt connection, or a one-sentence error saying how to start libvirtd."""
    libvirt = _libvirt()
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors are raised; do not also print them
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise BakeError(
            f"cannot connect to libvirt at {uri} ({_first_line(exc)}): start libvirtd "
            "(`systemctl start libvirtd`, or `python -m tools.libvirtd` as root in a talos-os checkout)"
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def remove(conn: Any, name: str) -> bool:
    """Stop and undefine domain ``name`` (with its UEFI vars); False if there was none."""
    libvirt = _libvirt()
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    return True


def define(conn: Any, spec: DomainSpec, *, start: bool = False, force: bool = False) -> Any:
    """Define the domain (replacing one of the same name only with ``force``) and optionally start it."""
    libvirt = _libvirt()
    uri = conn.getURI()
    try:
        conn.lookupByName(spec.name)
        exists = True
    except libvirt.libvirtError:
        exists = False
    if exists:
        if not force:
            raise BakeError(
                f"a domain named {spec.name!r} already exists on {uri}: pass --force to replace it "
                "or choose another --name"
            )
        remove(conn, spec.name)
    try:
        dom = conn.defineXML(domain_xml(spec))
    except libvirt.libvirtError as exc:
        raise BakeError(
            f"libvirt refused the definition of domain {spec.name!r}: {_first_line(exc)}"
        ) from None
    if start:
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            hint = "see /var/log/libvirt/qemu/" + spec.name + ".log"
            if "network" in str(exc) and "not active" in str(exc):
                hint = f"start it with `virsh net-start {spec.network.source}` or pass --network user"
            raise BakeError(
                f"domain {spec.name!r} is defined but did not start ({_first_line(exc)}): {hint}"
            ) from None
    return dom
