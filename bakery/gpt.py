"""Read a GPT partition table from a disk or image file: the ISO builder takes kernel, initramfs
and squashfs out of a baked image, and the installer looks for an existing table on its target.

Pure parsing of the header at LBA 1 and its entry array; no tool, no root.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from bakery.errors import BakeError

SECTOR = 512
SIGNATURE = b"EFI PART"
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # up to the entry array's CRC (92 bytes)
_ENTRY = struct.Struct("<16s16sQQQ72s")


@dataclass(frozen=True)
class GptPartition:
    """One used entry of the partition array."""

    number: int
    name: str
    type_guid: str
    guid: str
    first_lba: int
    last_lba: int

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


@dataclass(frozen=True)
class GptHeader:
    """The fields of a GPT header we use."""

    current_lba: int
    backup_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int


def parse_header(sector: bytes) -> GptHeader | None:
    """The header in ``sector`` (LBA 1 or the last LBA) if its signature and CRC are right, else None."""
    if len(sector) < _HEADER.size or sector[:8] != SIGNATURE:
        return None
    f = _HEADER.unpack_from(sector)
    size = f[2]
    if not _HEADER.size <= size <= len(sector):
        return None
    raw = bytearray(sector[:size])
    raw[16:20] = b"\0\0\0\0"
    if zlib.crc32(raw) != f[3]:
        return None
    return GptHeader(
        current_lba=f[5],
        backup_lba=f[6],
        first_usable=f[7],
        last_usable=f[8],
        disk_guid=str(uuid.UUID(bytes_le=f[9])),
        entries_lba=f[10],
        entry_count=f[11],
        entry_size=f[12],
        entries_crc=f[13],
    )


def parse_entries(header: GptHeader, array: bytes) -> list[GptPartition]:
    """The used entries (non-zero type GUID) of the partition array, numbered from 1."""
    if zlib.crc32(array[: header.entry_count * header.entry_size]) != header.entries_crc:
        raise BakeError("the GPT partition array is damaged (CRC mismatch): the image is not usable")
    parts = []
    for i in range(header.entry_count):
        type_raw, guid_raw, first, last, _attrs, name_raw = _ENTRY.unpack_from(array, i * header.entry_size)
        if type_raw == bytes(16):
            continue
        parts.append(
            GptPartition(
                number=i + 1,
                name=name_raw.decode("utf-16-le").rstrip("\0"),
                type_guid=str(uuid.UUID(bytes_le=type_raw)).upper(),
                guid=str(uuid.UUID(bytes_le=guid_raw)),
                first_lba=first,
                last_lba=last,
            )
        )
    return parts


def read_partitions(path: Path) -> list[GptPartition]:
    """The partitions of the disk or image at ``path`` (its primary GPT), or a BakeError."""
    with open(path, "rb") as f:
        f.seek(SECTOR)
        header = parse_header(f.read(SECTOR))
        if header is None:
            raise BakeError(f"{path} has no valid GPT partition table: is it a talos-os disk image?")
        f.seek(header.entries_lba * SECTOR)
        array = f.read(header.entry_count * header.entry_size)
    return parse_entries(header, array)
