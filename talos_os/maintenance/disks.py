"""The node's disks as sysfs describes them, for choosing ``install.disk``.

Whole disks only (partitions, loop, ram and zram devices are left out); size, model, serial and
flags from ``/sys/class/block/NAME``; what each holds from its first and last MiB, or why it is in
use (mounted, swap, held), through the installer's own checks so the listing and the installer
agree. Every path is a parameter: the tests build a fake sysfs tree.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from talos_os.install import disk as install_disk

SKIP_PREFIXES = ("loop", "ram", "zram", "dm-", "md")
OPTICAL = ("sr",)  # CD/DVD drives: listed, never suggested for install.disk
SYSTEM = install_disk.System()  # the kernel's real views


@dataclass(frozen=True)
class Disk:
    """One whole disk."""

    name: str
    path: str
    size: int
    model: str
    serial: str
    read_only: bool
    removable: bool
    rotational: bool
    contents: str


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _flag(path: Path) -> bool:
    return _text(path) == "1"


def contents(path: str, system: install_disk.System = SYSTEM) -> str:
    """What the disk holds or why it is in use, in the installer's words ("nothing" when blank)."""
    try:
        target = install_disk.inspect_target(Path(path))
        busy = install_disk.uses(target, system)
        if busy:
            return "in use: " + "; ".join(busy)
        found = install_disk.signatures(*install_disk.read_ends(target))
    except (OSError, install_disk.InstallError) as exc:
        return f"unknown ({exc})"
    return " and ".join(found) if found else "nothing"


def list_disks(sys_root: Path = Path("/sys"), dev: str = "/dev", *, probe: bool = True) -> list[Disk]:
    """Every whole disk, sorted by name; ``probe=False`` skips reading the disks themselves."""
    block = sys_root / "class/block"
    disks: list[Disk] = []
    with contextlib.suppress(OSError):
        entries = sorted(block.iterdir())
        for entry in entries:
            name = entry.name
            if name.startswith(SKIP_PREFIXES) or (entry / "partition").exists():
                continue
            sectors = _text(entry / "size")
            size = int(sectors) * 512 if sectors.isdigit() else 0
            model = _text(entry / "device/model") or _text(entry / "device/name")
            serial = _text(entry / "serial") or _text(entry / "device/serial")
            if not serial:
                serial = _text(entry / "device/wwid")
            path = f"{dev}/{name}"
            disks.append(
                Disk(
                    name=name,
                    path=path,
                    size=size,
                    model=model,
                    serial=serial,
                    read_only=_flag(entry / "ro"),
                    removable=_flag(entry / "removable"),
                    rotational=_flag(entry / "queue/rotational"),
                    contents=contents(path) if probe and size else ("empty drive" if not size else ""),
                )
            )
    return disks
