"""The bakery's view of a GPT: the ISO builder takes kernel, initramfs and squashfs out of a baked
image, and the installer checks the table on its target.

The parsing and validation are the init's (:mod:`talos_os.lib.gpt`, which grows EPHEMERAL on a
node); this module only turns its answers into byte offsets and one-sentence BakeErrors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bakery.errors import BakeError
from talos_os.lib import gpt as _gpt

SECTOR = 512
SIGNATURE = _gpt.SIGNATURE


@dataclass(frozen=True)
class GptPartition:
    """One used entry of the partition array, with byte offsets for copying it out."""

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


def parse_header(sector: bytes) -> _gpt.GptHeader | None:
    """The header in ``sector`` (LBA 1 or the last LBA) if its signature and CRC are right, else None."""
    try:
        return _gpt.parse_header(sector[:SECTOR], SECTOR)
    except _gpt.GptError:
        return None


def read_partitions(path: Path) -> list[GptPartition]:
    """The partitions of the disk or image at ``path`` (its primary GPT, 512-byte sectors), or a BakeError."""
    with open(path, "rb") as f:
        head = f.read(2 * SECTOR)
        if parse_header(head[SECTOR:]) is None:
            raise BakeError(f"{path} has no valid GPT partition table: is it a talos-os disk image?")
        try:
            table = _gpt.read_gpt(f)
        except _gpt.GptError as exc:
            raise BakeError(
                f"the GPT partition array of {path} is damaged ({exc}): the image is not usable"
            ) from None
    return [
        GptPartition(
            number=p.number,
            name=p.name,
            type_guid=str(p.type_guid).upper(),
            guid=str(p.guid),
            first_lba=p.first_lba,
            last_lba=p.last_lba,
        )
        for p in table.partitions
    ]
