"""Files are written under a temporary name and renamed: an interruption leaves the old file or none,
never a half-written one under the final name.

Two flavours, because their callers need different things: :func:`atomic_path` / :func:`write_atomic`
for outputs of any size written by a tool (the bake, publishing), and :func:`write_with_mode` for small
files whose permissions matter from the first byte (key material, the node's /etc files).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temp_name(final: Path) -> Path:
    """The temporary sibling used while ``final`` is being written."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path; on success fsync and rename it to ``final``, else delete it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_with_mode(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Write via a same-directory temp file created with ``mode``, fsync, then rename over ``path``.

    The temp file is born with its final permissions (os.open, then fchmod to undo any umask), so a
    secret is never readable by others at any point; readers see either the old or the new file.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; some filesystems refuse to fsync a directory, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
