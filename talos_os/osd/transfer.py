"""Files out of the node: a path as a streamed tar (``CopyOut``) and one file's bytes (``Read``).

The tar is written by a worker thread into a small bounded queue, so a large tree streams with
flat memory and a client that hangs up stops the walk. What counts as a secret (which only
``os:admin`` may read) is decided here too.
"""

from __future__ import annotations

import errno
import io
import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from talos_os.osd.opener import Opener

CHUNK = 64 * 1024
QUEUE_CHUNKS = 16
# Trees that hold key material or credentials on a node, whatever their file modes say.
SECRET_TREES = (
    "/run/talos",
    "/var/lib/talos",
    "/etc/kubernetes",
    "/var/lib/etcd",
    "/var/lib/kubelet/pki",
)


class TransferError(Exception):
    """The path cannot be sent; ``kind`` is a key of :data:`KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


#: What each kind of failure is, for the servicer to turn into a status code.
KINDS = ("not_found", "invalid", "bad_path", "denied", "failed")
MAX_PATH = 4096  # PATH_MAX: a longer path names nothing
SHOWN = 160  # characters of a path quoted in a message or a log line
#: The trees an ``os:reader`` may read files under (everything else needs ``os:admin``).
READER_TREES = ("/proc", "/sys", "/var/log", "/etc")


def shown(path: str) -> str:
    """``path`` for a message: at most :data:`SHOWN` characters, NULs and control characters escaped."""
    text = path if len(path) <= SHOWN else f"{path[:SHOWN]}... ({len(path)} characters)"
    return (
        text.encode("unicode_escape", "backslashreplace").decode("ascii") if not text.isprintable() else text
    )


def check_path(path: str) -> str:
    """An absolute path of at most :data:`MAX_PATH` bytes without NUL, else ``bad_path``."""
    if not path or not path.startswith("/"):
        raise TransferError("invalid", f"{shown(path)!r} is not an absolute path on the node")
    if "\0" in path:
        raise TransferError("bad_path", f"{shown(path)!r} contains a NUL character")
    if len(os.fsencode(path)) > MAX_PATH:
        raise TransferError("bad_path", f"{shown(path)} is longer than {MAX_PATH} bytes")
    return path


def _from_os(exc: OSError, path: str, doing: str = "read") -> TransferError:
    """An OSError as a TransferError of the right kind, with a short message."""
    code = exc.errno
    where = shown(path)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return TransferError("not_found", f"{where} does not exist on the node")
    if code in (errno.EACCES, errno.EPERM):
        return TransferError("denied", f"cannot {doing} {where}: permission denied")
    if code == errno.ENAMETOOLONG:
        return TransferError("bad_path", f"{where} is too long a path")
    return TransferError("failed", f"cannot {doing} {where}: {exc.strerror or exc}")


def _check_exists(path: str) -> Path:
    p = Path(check_path(path))
    try:
        os.lstat(p)
    except OSError as exc:
        raise _from_os(exc, path) from None
    return p


def is_secret(path: str | os.PathLike[str], extra: Iterable[str | os.PathLike[str]] = ()) -> bool:
    """True for files in a secret tree or ``extra``, or not world-readable (a second fence for readers).

    Decided on the resolved path, so a symlink cannot launder a secret. The fence that holds by
    construction is :func:`read_as_reader`; this one gives the clearer message for the usual cases.
    """
    real = os.path.realpath(path)
    for tree in (*SECRET_TREES, *(os.fspath(e) for e in extra)):
        tree = os.path.realpath(tree)
        if real == tree or real.startswith(tree.rstrip("/") + "/"):
            return True
    try:
        return not os.stat(real).st_mode & stat.S_IROTH
    except OSError:
        return False  # it does not exist (or cannot be seen): the read itself says so


def read_file(path: str, active: Callable[[], bool] = lambda: True) -> Iterator[bytes]:
    """The bytes of one file (regular, or a /proc and /sys pseudo-file) in chunks, opened by osd itself."""
    check_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _from_os(exc, path) from None
    return _regular_chunks(fd, path, active)


def reader_tree(path: str, trees: Iterable[str]) -> str | None:
    """The allow-listed tree ``path`` lies in, as written (the kernel, not this, stops ``..``)."""
    best: str | None = None
    for tree in trees:
        root = tree.rstrip("/") or "/"
        inside = path == root or path.startswith(root.rstrip("/") + "/")
        if inside and (best is None or len(root) > len(best)):
            best = root
    return best


def read_as_reader(
    path: str,
    trees: Iterable[str],
    opener: Opener,
    active: Callable[[], bool] = lambda: True,
) -> Iterator[bytes]:
    """A file for an ``os:reader``: under one of ``trees``, opened by the unprivileged helper.

    The helper opens it with ``openat2`` beneath the tree, refusing magic links (``/proc/PID/root``,
    ``/proc/PID/fd/N``) and symlinks or ``..`` that leave the tree, with the permissions of a uid
    that owns nothing: a file root alone may read stays unread.
    """
    check_path(path)
    trees = tuple(trees)
    tree = reader_tree(path, trees)
    if tree is None:
        raise TransferError(
            "denied", f"{shown(path)} is outside the trees a reader may read ({', '.join(trees)})"
        )
    try:
        fd = opener.open(tree, path[len(tree) :].lstrip("/"))
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.ELOOP):
            raise TransferError(
                "denied", f"{shown(path)} leads out of {tree} (a magic link, a symlink or '..')"
            ) from None
        raise _from_os(exc, path) from None
    return _regular_chunks(fd, path, active)


def _regular_chunks(fd: int, path: str, active: Callable[[], bool]) -> Iterator[bytes]:
    """Chunks of the open regular file ``fd`` (closed in every case); other kinds are refused."""
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise TransferError("invalid", f"{shown(path)} is a directory: copy it with `osctl cp`")
        if not stat.S_ISREG(st.st_mode):
            raise TransferError("invalid", f"{shown(path)} is not a regular file (a device, fifo or socket)")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    return _chunks(f, path, active)


def _chunks(f: IO[bytes], path: str, active: Callable[[], bool]) -> Iterator[bytes]:
    with f:
        while active():
            try:
                data = f.read(CHUNK)
            except OSError as exc:  # /proc/PID/mem of a process that went away, an I/O error
                raise _from_os(exc, path) from None
            if not data:
                return
            yield data


class _Cancelled(Exception):
    pass


class _QueueWriter(io.RawIOBase):
    """A write-only file object feeding a bounded queue; writing blocks while the consumer lags."""

    def __init__(self, q: queue.Queue[bytes | BaseException | None], stop: threading.Event) -> None:
        super().__init__()
        self._q = q
        self._stop = stop

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        while True:
            if self._stop.is_set():
                raise _Cancelled
            try:
                self._q.put(chunk, timeout=0.5)
                return len(chunk)
            except queue.Full:
                continue


def tar_stream(
    path: str, active: Callable[[], bool] = lambda: True, skipped: list[str] | None = None
) -> Iterator[bytes]:
    """``path`` (a file or a whole tree) as an uncompressed PAX tar, in chunks of about :data:`CHUNK`.

    Entries are named after the path's last component (``/var/log`` -> ``log/...``). Sockets
    are left out; device nodes and fifos go in as such (their content is never read). Entries that
    vanish or cannot be read during the walk are left out and named in ``skipped``; a file that
    shrinks while it is read is padded with zeros to the size its header promised (and named too).
    """
    p = _check_exists(path)
    arcname = p.name or "rootfs"
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_CHUNKS)
    stop = threading.Event()
    missed = skipped if skipped is not None else []

    def work() -> None:
        try:
            with tarfile.open(
                fileobj=cast(IO[bytes], _QueueWriter(q, stop)),
                mode="w|",
                bufsize=CHUNK,
                format=tarfile.PAX_FORMAT,
            ) as tar:
                _add_tree(tar, str(p), arcname, missed)
        except _Cancelled:
            return
        except Exception as exc:
            _put(q, stop, TransferError("failed", f"cannot copy {shown(path)}: {exc}"))
            return
        _put(q, stop, None)

    worker = threading.Thread(target=work, name=f"tar {shown(path)}", daemon=True)
    return _drain(q, stop, worker, active)


def _add_tree(tar: tarfile.TarFile, top: str, arcname: str, skipped: list[str]) -> None:
    """Add ``top`` and everything under it (depth first, sorted), skipping what cannot be read."""
    stack = [(top, arcname)]
    while stack:
        path, name = stack.pop()
        try:
            if _add_one(tar, path, name, skipped):
                entries = sorted(os.listdir(path), reverse=True)
                stack.extend((os.path.join(path, e), f"{name}/{e}") for e in entries)
        except OSError:
            skipped.append(path)


def _add_one(tar: tarfile.TarFile, path: str, name: str, skipped: list[str]) -> bool:
    """Add one entry; True when it is a directory whose entries come next."""
    info = tar.gettarinfo(path, arcname=name)
    if info is None:  # a socket
        return False
    if not info.isreg():
        tar.addfile(info)
        return info.isdir()
    with open(path, "rb") as f:
        info = tar.gettarinfo(arcname=name, fileobj=f)  # the size of what is open now
        exact = _Exact(f, info.size)
        tar.addfile(info, cast(IO[bytes], exact))
    if exact.short:
        skipped.append(f"{path} (shrank while read; padded with zeros)")
    return False


class _Exact(io.RawIOBase):
    """Exactly ``size`` bytes of ``f``: zeros when it ends early, so the tar stays well formed."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        super().__init__()
        self._f = f
        self._left = size
        self.short = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = b""
        try:
            while not self.short and len(data) < n and (more := self._f.read(n - len(data))):
                data += more
        except OSError:
            pass  # unreadable from here on: padded below like a file that shrank
        if len(data) < n:
            self.short = True
            data += bytes(n - len(data))
        self._left -= n
        return data


def _put(
    q: queue.Queue[bytes | BaseException | None], stop: threading.Event, item: BaseException | None
) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def _drain(
    q: queue.Queue[bytes | BaseException | None],
    stop: threading.Event,
    worker: threading.Thread,
    active: Callable[[], bool],
) -> Iterator[bytes]:
    worker.start()
    try:
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                if not active():
                    return
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(5.0)
