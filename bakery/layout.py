"""Partition layout arithmetic: pure functions, unit-tested without touching a disk."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from bakery.errors import BakeError
from talos_os.lib.gpt import SECTOR

ALIGN = 2048  # sectors: 1 MiB alignment
GPT_SECTORS = 34  # protective MBR + header + 32 sectors of entries (backup: 33 at the end)
MiB = 1 << 20
NAMESPACE = uuid.UUID("6a1e7b8e-3f0c-4c55-9a43-51c0a5d1e2f4")


@dataclass(frozen=True)
class PartitionSpec:
    """What a partition is: its GPT name, sgdisk type code and size (None: the rest of the disk).
    No place on a disk yet: the same spec lands elsewhere on another disk size."""

    name: str
    type_code: str
    size: int | None
    min_size: int = 0


@dataclass(frozen=True)
class Partition:
    """Where a partition lands: first and last LBA (inclusive) and its pinned GUID.

    The plan handed to sgdisk, not an entry read back (that is :class:`talos_os.lib.gpt.GptPartition`):
    its type is sgdisk's short code (``8300``) and its GUID the string pinned by the image's seed,
    which are what sgdisk's arguments and the manifest carry."""

    number: int
    name: str
    type_code: str
    first_lba: int
    last_lba: int
    guid: str

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


DEFAULT_LAYOUT: tuple[PartitionSpec, ...] = (
    PartitionSpec("EFI", "EF00", 32 * MiB),
    PartitionSpec("BIOS", "EF02", 1 * MiB),
    PartitionSpec("BOOT", "8300", 128 * MiB),
    PartitionSpec("ROOT-A", "8300", 320 * MiB),
    PartitionSpec("ROOT-B", "8300", 320 * MiB),
    PartitionSpec("EPHEMERAL", "8300", None, min_size=64 * MiB),
)


def stable_uuid(seed: str, what: str) -> str:
    """A GUID that is the same for the same inputs (reproducible images), different per image."""
    return str(uuid.uuid5(NAMESPACE, f"{seed}/{what}"))


def min_disk_size(specs: tuple[PartitionSpec, ...] = DEFAULT_LAYOUT) -> int:
    """Smallest disk the layout fits on, in bytes (rounded up to a MiB)."""
    used = ALIGN * SECTOR + sum(s.size if s.size is not None else s.min_size for s in specs)
    return used + MiB  # room for the backup GPT at the end


def plan(disk_size: int, seed: str, specs: tuple[PartitionSpec, ...] = DEFAULT_LAYOUT) -> list[Partition]:
    """Place the partitions on a disk of ``disk_size`` bytes, 1 MiB aligned, GUIDs pinned by ``seed``."""
    if disk_size % SECTOR:
        raise BakeError(f"disk size {disk_size} is not a multiple of {SECTOR} bytes")
    need = min_disk_size(specs)
    if disk_size < need:
        raise BakeError(
            f"disk size {disk_size // MiB} MiB is too small for this layout: use --disk-size {-(-need // MiB)}M or more"
        )
    total = disk_size // SECTOR
    last_usable = total - GPT_SECTORS  # the backup GPT takes the last 33 sectors
    parts = []
    lba = ALIGN
    for number, spec in enumerate(specs, start=1):
        if spec.size is None:
            last = last_usable
            last -= (last - lba + 1) % ALIGN if (last - lba + 1) > ALIGN else 0
        else:
            last = lba + spec.size // SECTOR - 1
        if last > last_usable:
            raise BakeError(f"partition {spec.name} does not fit on the disk: use a larger --disk-size")
        parts.append(Partition(number, spec.name, spec.type_code, lba, last, stable_uuid(seed, spec.name)))
        lba = -(-(last + 1) // ALIGN) * ALIGN
    return parts


def sgdisk_args(parts: list[Partition], seed: str) -> list[str]:
    """sgdisk arguments that write exactly this table (with a protective MBR)."""
    args = ["-o", "-U", stable_uuid(seed, "disk")]
    for p in parts:
        args += [
            "-n", f"{p.number}:{p.first_lba}:{p.last_lba}",
            "-t", f"{p.number}:{p.type_code}",
            "-c", f"{p.number}:{p.name}",
            "-u", f"{p.number}:{p.guid}",
        ]  # fmt: skip
    return args
