"""An image as EBS direct-API blocks: 512 KiB each, holes and all-zero blocks never sent.

A snapshot started with ``start_snapshot`` reads as zeros wherever no block was put, so a
sparse 2 GiB image with ~150 MiB of data needs only its data blocks uploaded. Holes are
found with ``SEEK_DATA``/``SEEK_HOLE`` (no read at all); blocks the filesystem stores but
that hold only zeros are found by reading them and are skipped too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from talos_os.install.sparse import data_extents

BLOCK_SIZE = 512 * 1024  # fixed by the EBS direct APIs
ZERO_BLOCK = bytes(BLOCK_SIZE)


def blocks_touching(extents: Iterator[tuple[int, int]]) -> Iterator[int]:
    """Indices of the blocks that overlap any extent, ascending and each once."""
    last = -1
    for start, end in extents:
        first = max(start // BLOCK_SIZE, last + 1)
        for index in range(first, (end - 1) // BLOCK_SIZE + 1):
            yield index
            last = index


def read_block(fd: int, index: int) -> bytes | None:
    """Block ``index`` (zero-padded past the end of the file), or None if it holds only zeros."""
    data = os.pread(fd, BLOCK_SIZE, index * BLOCK_SIZE)
    if len(data) < BLOCK_SIZE:
        data += bytes(BLOCK_SIZE - len(data))
    return None if data == ZERO_BLOCK else data


def block_count(size: int) -> int:
    """Blocks an image of ``size`` bytes spans (the last one padded)."""
    return -(-size // BLOCK_SIZE)


@dataclass(frozen=True)
class ImageScan:
    """Where an image's data is: the blocks worth reading, out of all it spans."""

    path: Path
    size: int
    total_blocks: int
    candidates: tuple[int, ...]  # blocks touching data extents; the rest are holes

    @property
    def hole_blocks(self) -> int:
        return self.total_blocks - len(self.candidates)


def scan(path: Path) -> ImageScan:
    """Find an image's data blocks without reading its holes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        candidates = tuple(blocks_touching(data_extents(fd, size)))
    finally:
        os.close(fd)
    return ImageScan(path=path, size=size, total_blocks=block_count(size), candidates=candidates)


def count_zero_blocks(image: ImageScan) -> int:
    """How many candidate blocks hold only zeros (reads them; used by the dry-run plan)."""
    fd = os.open(image.path, os.O_RDONLY)
    try:
        return sum(1 for index in image.candidates if read_block(fd, index) is None)
    finally:
        os.close(fd)
