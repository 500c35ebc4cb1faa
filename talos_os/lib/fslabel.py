"""Filesystem labels read straight from the superblock: the node has no udev and no blkid.

Standard library only and tiny, because stage 1 (in the initramfs) uses it to find a live ISO and
the NoCloud config source uses it to find a ``cidata`` volume.
"""

from __future__ import annotations

from pathlib import Path

ISO_PVD_OFFSET = 16 * 2048  # ISO 9660: the primary volume descriptor is sector 16


def probe_label(path: str | Path) -> tuple[str, str | None] | None:
    """Return ``(fstype, label)`` for an iso9660 or vfat filesystem, or None for anything else.

    Only the superblock is read: the ISO 9660 primary volume descriptor's volume identifier, or
    the FAT boot sector's volume label (``mkfs.vfat -n`` writes it there and in the root dir).
    """
    try:
        with open(path, "rb") as f:
            boot = f.read(512)
            f.seek(ISO_PVD_OFFSET)
            pvd = f.read(2048)
    except OSError:
        return None
    if len(pvd) >= 72 and pvd[0] == 1 and pvd[1:6] == b"CD001":
        label = pvd[40:72].decode("ascii", "replace").rstrip(" \0")
        return "iso9660", label or None
    if len(boot) == 512 and boot[510:512] == b"\x55\xaa":
        if boot[82:87] == b"FAT32" and boot[66] in (0x28, 0x29):
            raw = boot[71:82]
        elif boot[54:58] == b"FAT1" and boot[38] in (0x28, 0x29):
            raw = boot[43:54]
        else:
            return None
        label = raw.decode("ascii", "replace").rstrip(" \0")
        return "vfat", None if label in ("", "NO NAME") else label
    return None
