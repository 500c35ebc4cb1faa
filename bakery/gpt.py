"""The bakery's view of a GPT: the ISO builder takes kernel, initramfs and squashfs out of a baked
image, the installer checks the table on its target, and publishing checks an --image.

The parsing, validation and the partition record are the node library's (:mod:`talos_os.lib.gpt`,
which grows EPHEMERAL on a node); this module only turns its failures into one-sentence BakeErrors.
"""

from __future__ import annotations

from pathlib import Path

from bakery.errors import BakeError
from talos_os.lib import gpt as _gpt
from talos_os.lib.gpt import SECTOR, GptPartition


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
    return list(table.partitions)
