"""Read a GUID partition table and grow it to the end of a larger disk, in pure Python.

A 2 GiB image written to a bigger disk (or a qcow2 resized after the bake) leaves the backup GPT
in the middle of the disk and the space after it unused. :func:`grow` moves the backup header and
entries to the true end, raises ``last_usable_lba`` and extends the last partition to the new end,
but only when that partition is the one we own (EPHEMERAL). The kernel still sees the old size
until it is told with ``BLKPG_RESIZE_PARTITION`` (see :mod:`talos_os.init.disks`): re-reading the
whole table (BLKRPART) fails while ROOT-A is mounted.

Nothing is written unless the primary header and its entries pass every check (signature,
sizes, both CRC32s): a table we do not fully understand is left alone. Writes go backup first,
then the primary, so a crash in between leaves a valid primary pointing at the old backup.
Standard library only (the init runs this).
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass, replace
from typing import BinaryIO

SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_FORMAT = "<8sIIIIQQQQ16sQIII"  # the 92 bytes every GPT revision 1.0 header has
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
ENTRY_FORMAT = "<16s16sQQQ72s"
ENTRY_MIN_SIZE = struct.calcsize(ENTRY_FORMAT)
MAX_ENTRIES_BYTES = 1 << 20  # sanity bound: sgdisk writes 16 KiB
# The one 512-byte sector: the logical sector of every image the bakery writes, and the unit the kernel
# uses for partition start and size in sysfs and BLKPG whatever the device's own sector size.
SECTOR = 512
SECTOR_SIZES = (SECTOR, 4096)  # the logical sector sizes a table is looked for with
ALIGN_BYTES = 1 << 20  # partitions end on a 1 MiB boundary, like the bakery lays them out
MBR_PROTECTIVE = 0xEE


class GptError(Exception):
    """The disk has no GPT we trust enough to rewrite; the message says what is wrong."""


@dataclass(frozen=True)
class GptHeader:
    """The fields of a GPT header (primary or backup)."""

    revision: int
    header_size: int
    current_lba: int
    backup_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: uuid.UUID
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc32: int

    def pack(self, sector: int) -> bytes:
        """The header sector with a fresh header CRC32 (the rest of the sector zero)."""
        raw = struct.pack(
            HEADER_FORMAT,
            SIGNATURE,
            self.revision,
            HEADER_SIZE,
            0,
            0,
            self.current_lba,
            self.backup_lba,
            self.first_usable_lba,
            self.last_usable_lba,
            self.disk_guid.bytes_le,
            self.entries_lba,
            self.num_entries,
            self.entry_size,
            self.entries_crc32,
        )
        crc = zlib.crc32(raw)
        return raw[:16] + struct.pack("<I", crc) + raw[20:] + bytes(sector - HEADER_SIZE)

    @property
    def entries_bytes(self) -> int:
        return self.num_entries * self.entry_size


@dataclass(frozen=True)
class GptPartition:
    """One used entry of a partition table as read from a disk or an image; ``number`` is its 1-based
    index, as the kernel numbers it. The one record of an on-disk entry: the init grows it, the bakery
    copies partitions out of images and compares tables with it."""

    number: int
    name: str
    type_guid: uuid.UUID
    guid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int

    @property
    def offset(self) -> int:
        """Byte offset of the first sector, in 512-byte sectors (:data:`SECTOR`, as our images have);
        for a table read with other sectors use :attr:`Gpt.sector` instead."""
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        """Length in bytes, in 512-byte sectors like :attr:`offset`."""
        return (self.last_lba - self.first_lba + 1) * SECTOR


@dataclass(frozen=True)
class Gpt:
    """A validated primary GPT: header, raw entry array and the used entries."""

    sector: int
    disk_sectors: int
    header: GptHeader
    entries: bytes
    partitions: tuple[GptPartition, ...]

    def find(self, name: str) -> GptPartition | None:
        return next((p for p in self.partitions if p.name == name), None)

    @property
    def last_partition(self) -> GptPartition | None:
        return max(self.partitions, key=lambda p: p.last_lba, default=None)

    @property
    def needs_grow(self) -> bool:
        """True when the backup header is not on the disk's last sector (the disk got bigger)."""
        return self.header.backup_lba != self.disk_sectors - 1


@dataclass(frozen=True)
class GrowResult:
    """What :func:`grow` did: moved the backup GPT and/or extended a partition."""

    moved: bool
    partition: GptPartition | None = None  # the partition after the change, when it was extended
    old_last_lba: int | None = None
    sector: int = 512

    @property
    def extended(self) -> bool:
        return self.partition is not None


def _pread(f: BinaryIO, offset: int, length: int) -> bytes:
    data = os.pread(f.fileno(), length, offset)
    if len(data) != length:
        raise GptError(f"short read at byte {offset}: the disk is smaller than its partition table says")
    return data


def _pwrite(f: BinaryIO, offset: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(f.fileno(), view, offset)
        view = view[written:]
        offset += written


def disk_size(f: BinaryIO) -> int:
    """Size in bytes of a disk or image file (seeking to the end works for both)."""
    return os.lseek(f.fileno(), 0, os.SEEK_END)


def parse_header(raw: bytes, sector: int) -> GptHeader:
    """Parse and check one header sector; GptError on a bad signature, size or CRC."""
    if raw[:8] != SIGNATURE:
        raise GptError("no GPT signature")
    (
        _,
        revision,
        header_size,
        crc,
        _,
        current,
        backup,
        first,
        last,
        guid,
        entries_lba,
        count,
        esize,
        ecrc,
    ) = struct.unpack_from(HEADER_FORMAT, raw)
    if not HEADER_SIZE <= header_size <= sector:
        raise GptError(f"GPT header size {header_size} is out of range")
    body = bytearray(raw[:header_size])
    body[16:20] = bytes(4)
    if zlib.crc32(body) != crc:
        raise GptError("GPT header CRC32 mismatch")
    if esize < ENTRY_MIN_SIZE or esize % ENTRY_MIN_SIZE or count == 0 or count * esize > MAX_ENTRIES_BYTES:
        raise GptError(f"GPT entry array of {count} x {esize} bytes is out of range")
    if any(raw[header_size:sector]):
        raise GptError("GPT header sector has data past the header (an unknown revision)")
    return GptHeader(
        revision=revision,
        header_size=header_size,
        current_lba=current,
        backup_lba=backup,
        first_usable_lba=first,
        last_usable_lba=last,
        disk_guid=uuid.UUID(bytes_le=guid),
        entries_lba=entries_lba,
        num_entries=count,
        entry_size=esize,
        entries_crc32=ecrc,
    )


def parse_entries(entries: bytes, entry_size: int) -> tuple[GptPartition, ...]:
    parts = []
    for index in range(len(entries) // entry_size):
        raw = entries[index * entry_size : (index + 1) * entry_size]
        type_guid, guid, first, last, attrs, name = struct.unpack_from(ENTRY_FORMAT, raw)
        if not any(type_guid):
            continue
        text = name.decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(
            GptPartition(
                index + 1, text, uuid.UUID(bytes_le=type_guid), uuid.UUID(bytes_le=guid), first, last, attrs
            )
        )
    return tuple(parts)


def read_gpt(f: BinaryIO) -> Gpt:
    """Read and validate the primary GPT of an open disk (512- or 4096-byte sectors)."""
    total = disk_size(f)
    for sector in SECTOR_SIZES:
        raw = os.pread(f.fileno(), sector, sector)
        if len(raw) == sector and raw[:8] == SIGNATURE:
            break
    else:
        raise GptError("no GPT header at LBA 1")
    header = parse_header(raw, sector)
    sectors = total // sector
    entry_sectors = -(-header.entries_bytes // sector)
    if header.current_lba != 1:
        raise GptError(f"primary GPT header says it lives at LBA {header.current_lba}, not 1")
    if not 2 <= header.entries_lba <= header.first_usable_lba - entry_sectors:
        raise GptError("GPT entry array overlaps the usable area")
    if not header.first_usable_lba <= header.last_usable_lba < header.backup_lba:
        raise GptError("GPT usable range is inconsistent")
    if header.backup_lba >= sectors:
        raise GptError(
            f"the GPT expects a disk of {header.backup_lba + 1} sectors but it has {sectors}: "
            "the disk is smaller than the image written to it"
        )
    entries = _pread(f, header.entries_lba * sector, header.entries_bytes)
    if zlib.crc32(entries) != header.entries_crc32:
        raise GptError("GPT entry array CRC32 mismatch")
    parts = parse_entries(entries, header.entry_size)
    for p in parts:
        if not header.first_usable_lba <= p.first_lba <= p.last_lba <= header.last_usable_lba:
            raise GptError(f"partition {p.number} ({p.name}) lies outside the usable area")
    return Gpt(sector, sectors, header, entries, parts)


def _with_last_lba(gpt: Gpt, part: GptPartition, last_lba: int) -> bytes:
    """The entry array with one partition's last LBA changed."""
    entries = bytearray(gpt.entries)
    offset = (part.number - 1) * gpt.header.entry_size + 40  # type(16) + guid(16) + first(8)
    struct.pack_into("<Q", entries, offset, last_lba)
    return bytes(entries)


def _protective_mbr(mbr: bytes, old_sectors: int, new_sectors: int) -> bytes | None:
    """The MBR with its protective 0xEE entry resized, or None if it is not a plain protective MBR."""
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return None
    entries = [mbr[446 + 16 * i : 446 + 16 * (i + 1)] for i in range(4)]
    used = [i for i, e in enumerate(entries) if e[4] != 0]
    if len(used) != 1 or entries[used[0]][4] != MBR_PROTECTIVE:
        return None  # hybrid or no MBR: not ours to touch
    start, size = struct.unpack_from("<II", entries[used[0]], 8)
    if start != 1 or size not in (min(old_sectors - 1, 0xFFFFFFFF), 0xFFFFFFFF):
        return None
    out = bytearray(mbr)
    struct.pack_into("<I", out, 446 + 16 * used[0] + 12, min(new_sectors - 1, 0xFFFFFFFF))
    return bytes(out)


def plan(
    gpt: Gpt, grow_name: str | None, align_bytes: int = ALIGN_BYTES
) -> tuple[GptHeader, bytes, GrowResult]:
    """The new primary header and entries for a GPT moved to the disk's end (pure)."""
    sector = gpt.sector
    header = gpt.header
    entry_sectors = -(-header.entries_bytes // sector)
    backup_lba = gpt.disk_sectors - 1
    backup_entries_lba = backup_lba - entry_sectors
    last_usable = backup_entries_lba - 1
    if last_usable < header.last_usable_lba:
        raise GptError("the disk is smaller than its partition table")
    entries = gpt.entries
    result = GrowResult(moved=True, sector=sector)
    last = gpt.last_partition
    if grow_name is not None and last is not None and last.name == grow_name:
        align = max(1, align_bytes // sector)
        end = (last_usable + 1) // align * align - 1
        if end > last.last_lba:
            entries = _with_last_lba(gpt, last, end)
            result = replace(result, partition=replace(last, last_lba=end), old_last_lba=last.last_lba)
    new = replace(
        header,
        header_size=HEADER_SIZE,
        backup_lba=backup_lba,
        last_usable_lba=last_usable,
        entries_crc32=zlib.crc32(entries),
    )
    return new, entries, result


def grow(f: BinaryIO, grow_name: str | None = "EPHEMERAL", align_bytes: int = ALIGN_BYTES) -> GrowResult:
    """Move the backup GPT to the end of the disk and extend ``grow_name`` if it is the last partition.

    ``f`` is the whole disk opened read-write. Returns ``GrowResult(moved=False)`` without
    writing anything when the table already spans the disk.
    """
    gpt = read_gpt(f)
    if not gpt.needs_grow:
        return GrowResult(moved=False, sector=gpt.sector)
    sector = gpt.sector
    old = gpt.header
    new, entries, result = plan(gpt, grow_name, align_bytes)
    entry_sectors = -(-new.entries_bytes // sector)
    backup = replace(
        new,
        current_lba=new.backup_lba,
        backup_lba=new.current_lba,
        entries_lba=new.backup_lba - entry_sectors,
    )
    padded = entries + bytes(entry_sectors * sector - len(entries))
    mbr = _protective_mbr(_pread(f, 0, 512), old.backup_lba + 1, gpt.disk_sectors)
    # Backup first: until the primary is rewritten it still points at the old, intact backup.
    _pwrite(f, backup.entries_lba * sector, padded)
    _pwrite(f, backup.current_lba * sector, backup.pack(sector))
    os.fsync(f.fileno())
    _pwrite(f, new.entries_lba * sector, padded)
    _pwrite(f, new.current_lba * sector, new.pack(sector))
    if mbr is not None:
        _pwrite(f, 0, mbr)
    os.fsync(f.fileno())
    # The old backup now sits past the old last usable LBA: never inside a partition's old extent.
    # Zero the part of it that the new backup did not overwrite (a small growth overlaps them).
    old_start = old.backup_lba - entry_sectors
    old_end = min(old.backup_lba + 1, backup.entries_lba)
    if old.last_usable_lba < old_start < old_end:
        _pwrite(f, old_start * sector, bytes((old_end - old_start) * sector))
        os.fsync(f.fileno())
    return result
