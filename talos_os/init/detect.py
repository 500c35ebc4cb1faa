"""Which platform is this node running on?

The bakery writes ``talos.platform=NAME`` into the image's command line and that always wins;
detection from firmware and hypervisor hints is the fallback for an image booted somewhere it
was not baked for (an ISO on bare metal or on a VM). Every path is read under ``root`` so tests
build a fake sysfs tree. AWS is checked before Xen because older EC2 instances run on Xen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from talos_os.init.cmdline import Cmdline
from talos_os.init.cmdline import parse as parse_cmdline

AWS = "aws"
KVM = "kvm"
XEN = "xen"
BARE_METAL = "bare-metal"
# Spellings people type on a command line, mapped to plugin names.
ALIASES = {"bare_metal": BARE_METAL, "metal": BARE_METAL, "baremetal": BARE_METAL, "qemu": KVM, "ec2": AWS}

DMI = "sys/class/dmi/id"
# EC2 product UUIDs start with "ec2"; some firmware shows the first field little-endian ("xxxx2?ec").
_EC2_UUID = re.compile(r"^(ec2|[0-9a-f]{4}2[0-9a-f]ec)", re.IGNORECASE)


@dataclass(frozen=True)
class Detected:
    """A platform name and the evidence for it (logged at boot so a wrong guess is explainable)."""

    name: str
    reason: str


def _read(root: Path, rel: str) -> str:
    """A small sysfs value, stripped; "" if absent or unreadable (product_uuid is root-only)."""
    try:
        return (root / rel).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def normalize(name: str) -> str:
    """Map an alias (``bare_metal``, ``qemu``...) to the plugin name; other names pass through."""
    key = name.strip().lower()
    return ALIASES.get(key, key)


def detect_with_reason(root: Path | str = Path("/"), cmdline: Cmdline | str | None = None) -> Detected:
    """Detect the platform; ``cmdline`` defaults to ``root/proc/cmdline``."""
    root = Path(root)
    if cmdline is None:
        cmdline = _read(root, "proc/cmdline")
    if isinstance(cmdline, str):
        cmdline = parse_cmdline(cmdline)
    forced = cmdline.get("talos.platform")
    if forced:
        return Detected(normalize(forced), f"talos.platform={forced} on the kernel command line")

    vendor = _read(root, f"{DMI}/sys_vendor")
    product = _read(root, f"{DMI}/product_name")
    product_uuid = _read(root, f"{DMI}/product_uuid")
    hv_type = _read(root, "sys/hypervisor/type")
    hv_uuid = _read(root, "sys/hypervisor/uuid")

    if vendor == "Amazon EC2":
        return Detected(AWS, "DMI sys_vendor is 'Amazon EC2'")
    if product_uuid and _EC2_UUID.match(product_uuid):
        return Detected(AWS, f"DMI product_uuid {product_uuid} looks like an EC2 instance")
    if hv_uuid.lower().startswith("ec2"):
        return Detected(AWS, f"/sys/hypervisor/uuid {hv_uuid} looks like an EC2 instance")

    if hv_type.lower() == "xen":
        return Detected(XEN, "/sys/hypervisor/type is 'xen'")
    if (root / "proc/xen").is_dir():
        return Detected(XEN, "/proc/xen exists")
    if vendor.lower() == "xen" or product == "HVM domU":
        return Detected(XEN, f"DMI says Xen (sys_vendor {vendor!r}, product_name {product!r})")

    if (root / "sys/firmware/qemu_fw_cfg").is_dir():
        return Detected(KVM, "/sys/firmware/qemu_fw_cfg exists")
    if vendor == "QEMU" or product.startswith(("KVM", "Standard PC")):
        return Detected(KVM, f"DMI says QEMU/KVM (sys_vendor {vendor!r}, product_name {product!r})")

    return Detected(BARE_METAL, "no hypervisor found")


def detect(root: Path | str = Path("/"), cmdline: Cmdline | str | None = None) -> str:
    """The platform plugin name: ``aws``, ``kvm``, ``xen``, ``bare-metal`` (or what the cmdline says)."""
    return detect_with_reason(root, cmdline).name
