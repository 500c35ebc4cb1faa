"""Where a sparse file's data is, found with ``SEEK_DATA``/``SEEK_HOLE`` so holes are never read.

Both the installer (which leaves holes unwritten or zeroes them cheaply) and the EBS upload
(which never sends them) walk a baked image this way.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator


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
