"""The write: data runs onto the target, zero ranges made cheap, then a read-back checked by sha256.

The write keeps holes: a fresh file stays sparse, and over old data the image's zero ranges are
zeroed with BLKZEROOUT (disks) or hole punching (files). Then fsync, drop the cached pages, read
back and compare sha256. The runs come from a raw image file (:func:`runs`) or from the pieces a
live ISO carries (:mod:`talos_os.install.image`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from talos_os.install.disk import InstallError, Target
from talos_os.install.sparse import data_extents

MiB = 1 << 20
CHUNK = MiB
BLKFLSBUF = 0x1261
BLKRRPART = 0x125F
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

Run = tuple[int, bytes | int]  # (offset, data) or (offset, length of zeros)


def runs(image: Path, chunk: int = CHUNK) -> Iterator[Run]:
    """``(offset, data)`` for non-zero chunks and ``(offset, length)`` for zero ranges, in order.

    Holes are found with SEEK_DATA/SEEK_HOLE without reading them; data extents are read in
    ``chunk``-sized pieces and all-zero pieces are reported as zero ranges too.
    """
    size = image.stat().st_size
    with open(image, "rb") as f:
        pos = 0
        for start, end in data_extents(f.fileno(), size):
            if start > pos:
                yield pos, start - pos
            pos = start
            while pos < end:
                f.seek(pos)
                piece = f.read(min(chunk, end - pos))
                if piece.count(0) == len(piece):
                    yield pos, len(piece)
                else:
                    yield pos, piece
                pos += len(piece)
        if pos < size:
            yield pos, size - pos


def coalesce(items: Iterable[Run]) -> Iterator[Run]:
    """Merge adjacent zero ranges so each becomes one zeroing call."""
    pending: tuple[int, int] | None = None
    for offset, item in items:
        if isinstance(item, int):
            pending = (pending[0], pending[1] + item) if pending else (offset, item)
            continue
        if pending:
            yield pending
            pending = None
        yield offset, item
    if pending:
        yield pending


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def zero_range(fd: int, offset: int, length: int, block: bool) -> None:
    """Make ``length`` bytes at ``offset`` read as zeros: BLKZEROOUT on a disk, a punched hole in a
    file, else by writing zeros."""
    try:
        if block:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        else:
            _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
            raise
    zeros = bytes(CHUNK)
    end = offset + length
    while offset < end:
        n = min(CHUNK, end - offset)
        os.pwrite(fd, zeros[:n], offset)
        offset += n


def update_zeros(h: hashlib._Hash, length: int) -> None:
    zeros = bytes(CHUNK)
    while length:
        n = min(CHUNK, length)
        h.update(zeros[:n])
        length -= n


def write(
    items: Iterable[Run], size: int, target: Target, progress: Callable[[int, int], None] | None = None
) -> tuple[int, int, str]:
    """Write the runs (an image of ``size`` bytes) onto ``target``; returns (data bytes, zeroed
    bytes, the image's sha256)."""
    h = hashlib.sha256()
    data = zeroed = 0
    flags = os.O_WRONLY | os.O_CLOEXEC | (0 if target.exists else os.O_CREAT | os.O_EXCL)
    fd = os.open(target.path, flags, 0o644)
    try:
        for offset, item in coalesce(items):
            if isinstance(item, int):
                update_zeros(h, item)
                if not target.fresh:
                    zero_range(fd, offset, item, target.block)
                    zeroed += item
                end = offset + item
            else:
                h.update(item)
                os.pwrite(fd, item, offset)
                data += len(item)
                end = offset + len(item)
            if progress:
                progress(end, size)
        if target.fresh:
            os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data, zeroed, h.hexdigest()


def read_back_sha256(target: Target, length: int, missing: str = "the disk may be failing") -> str:
    """sha256 of the first ``length`` bytes as the disk has them, not as the page cache does."""
    fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if target.block:
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, BLKFLSBUF, 0)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        buf = memoryview(bytearray(CHUNK * 4))
        pos = 0
        while pos < length:
            n = os.preadv(fd, [buf[: min(len(buf), length - pos)]], pos)
            if n == 0:
                raise InstallError(f"{target.path} ended after {pos} bytes while reading it back: {missing}")
            h.update(buf[:n])
            pos += n
        return h.hexdigest()
    finally:
        os.close(fd)


def reread_partitions(target: Target) -> None:
    """Ask the kernel to read the new partition table (a disk only; loop devices without partition
    scanning say EINVAL, which is fine)."""
    if not target.block:
        return
    fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, BLKRRPART, 0)
    finally:
        os.close(fd)
