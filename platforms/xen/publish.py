"""Xen host half: ``xl`` domain configs for the raw image, HVM and PV (through pygrub).

HVM boots the disk like a PC (SeaBIOS or OVMF, then GRUB); PV hands the disk to pygrub, which
reads /boot/grub/grub.cfg on the ext4 BOOT partition and returns the kernel, initramfs and
command line. The node reads its config URL from xenstore ``vm-data/talos-config-url``; xl has
no config key that writes vm-data, so ``vm_data_howto`` says how to write it by hand (xl) or
through XenServer/XCP-ng's ``xenstore-data``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bakery.errors import BakeError
from platforms.xen.xenstore import CONFIG_URL_KEY

PV_CONSOLE = "console=hvc0"  # a PV guest has no UART: its console is the Xen console
FIRMWARES = ("bios", "uefi")


@dataclass(frozen=True)
class XenDomain:
    """What both configs share; the disk path is absolute so xl finds it from any directory."""

    name: str
    disk: Path
    memory_mib: int = 2048
    vcpus: int = 2
    bridge: str = "xenbr0"
    firmware: str = "bios"

    def __post_init__(self) -> None:
        if not self.disk.is_absolute():
            raise BakeError(f"the disk path {self.disk} of a Xen domain must be absolute")
        if self.firmware not in FIRMWARES:
            raise BakeError(f"unknown firmware {self.firmware!r}: use bios or uefi")


def xl_string(value: str) -> str:
    """A double-quoted xl string (its lexer takes C-style backslash escapes)."""
    if any(c in value for c in "\n\r\0"):
        raise BakeError(f"{value!r} cannot go into an xl config: it holds a line break or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def xl_list(items: Sequence[str]) -> str:
    return "[ " + ", ".join(xl_string(i) for i in items) + " ]"


def disk_spec(disk: Path) -> str:
    """xl disk syntax (xl-disk-configuration): the whole image is the guest's first disk."""
    if "," in str(disk):
        raise BakeError(f"the image path {disk} holds a comma, which xl's disk syntax cannot carry: move it")
    return f"format=raw, vdev=xvda, access=rw, target={disk}"


def _config(header: str, d: XenDomain, kind: list[str], devices: list[str]) -> str:
    lines = [
        f"# talos-os {header} domain: xl create <this file>",
        f"# The machine config URL goes in xenstore {CONFIG_URL_KEY} (xl has no key for it):",
        f"# see {d.name}-vm-data.txt next to this file.",
        f"name = {xl_string(d.name)}",
        *kind,
        f"memory = {d.memory_mib}",
        f"vcpus = {d.vcpus}",
        f"disk = {xl_list([disk_spec(d.disk)])}",
        f"vif = {xl_list([f'bridge={d.bridge}'])}",
        *devices,
        'on_poweroff = "destroy"',
        'on_reboot = "restart"',
        'on_crash = "destroy"',
    ]
    return "\n".join(lines) + "\n"


def hvm_config(d: XenDomain) -> str:
    """An HVM guest: firmware, then GRUB from the disk; the serial console on a pty (``xl console``)."""
    return _config("HVM", d, ['type = "hvm"', f"firmware = {xl_string(d.firmware)}"], ['serial = "pty"'])


def pv_config(d: XenDomain) -> str:
    """A PV guest through pygrub; ``extra`` is appended to the boot entry's command line."""
    return _config(
        "PV (pygrub)", d, ['type = "pv"', 'bootloader = "pygrub"', f"extra = {xl_string(PV_CONSOLE)}"], []
    )


def vm_data_howto(name: str, config: str, url: str | None = None) -> str:
    """How to hand the machine config URL to the node through xenstore vm-data."""
    quoted = shlex.quote(url or "https://HOST/NODE.yaml")
    return (
        "\n".join(
            [
                f"The node reads its machine config URL from xenstore {CONFIG_URL_KEY}.",
                "xl has no config key that writes vm-data: create the domain paused, write the key, unpause:",
                f"  xl create -p {config}",
                f"  domid=$(xl domid {name})",
                f"  xenstore-write /local/domain/$domid/{CONFIG_URL_KEY} {quoted}",
                "  xenstore-chmod -r /local/domain/$domid/vm-data n0 r$domid",
                f"  xl unpause {name}",
                "XenServer / XCP-ng copy xenstore-data into the guest's vm-data at every start:",
                f"  xe vm-param-set uuid=<vm-uuid> xenstore-data:{CONFIG_URL_KEY}={quoted}",
                "A whole config can go in vm-data/user-data instead (split into user-data/0, /1... when large).",
            ]
        )
        + "\n"
    )
