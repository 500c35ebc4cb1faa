"""Where a sparse file's data is, found with ``SEEK_DATA``/``SEEK_HOLE`` so holes are never read.

The installer (which leaves holes unwritten or zeroes them cheaply), the bake's step cache and the EBS upload
(which never sends them) walk a baked image this way.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator

_CHUNK = 1 << 20


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` byte ranges that may hold data; the whole file if the filesystem cannot tell."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: everything is data
                yield pos, size
                return
            raise
        end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
        yield start, end
        pos = end


def sha256_hex(path: str | os.PathLike[str]) -> str:
    """The plain sha256 of a file, with its holes hashed from a zero buffer instead of read from disk."""
    h = hashlib.sha256()
    zeros = memoryview(bytes(_CHUNK))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        for start, end in data_extents(f.fileno(), size):
            while pos < start:  # a hole
                n = min(_CHUNK, start - pos)
                h.update(zeros[:n])
                pos += n
            f.seek(start)
            while pos < end:
                chunk = f.read(min(_CHUNK, end - pos))
                if not chunk:
                    raise OSError(f"{path} shrank while it was hashed")
                h.update(chunk)
                pos += len(chunk)
        while pos < size:
            n = min(_CHUNK, size - pos)
            h.update(zeros[:n])
            pos += n
    return h.hexdigest()
