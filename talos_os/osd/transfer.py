"""Files out of the node: a path as a streamed tar (``CopyOut``) and one file's bytes (``Read``).

The tar is written by a worker thread into a small bounded queue, so a large tree streams with
flat memory and a client that hangs up stops the walk. What counts as a secret (which only
``os:admin`` may read) is decided here too.
"""

from __future__ import annotations

import io
import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, cast

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
    """The path cannot be sent; ``kind`` is ``not_found``, ``invalid`` or ``failed``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _check_path(path: str) -> Path:
    if not path or not os.path.isabs(path):
        raise TransferError("invalid", f"{path!r} is not an absolute path on the node")
    p = Path(path)
    if not os.path.lexists(p):
        raise TransferError("not_found", f"{path} does not exist on the node")
    return p


def is_secret(path: str | os.PathLike[str], extra: Iterable[str | os.PathLike[str]] = ()) -> bool:
    """True for files an ``os:reader`` may not read: secret trees, ``extra`` paths, not world-readable.

    Decided on the resolved path, so a symlink cannot launder a secret.
    """
    real = os.path.realpath(path)
    for tree in (*SECRET_TREES, *(os.fspath(e) for e in extra)):
        tree = os.path.realpath(tree)
        if real == tree or real.startswith(tree.rstrip("/") + "/"):
            return True
    try:
        return not os.stat(real).st_mode & stat.S_IROTH
    except OSError:
        return False  # it does not exist: read_file says so


def read_file(path: str, active: Callable[[], bool] = lambda: True) -> Iterator[bytes]:
    """The bytes of one file (regular, or a /proc and /sys pseudo-file) in chunks."""
    p = _check_path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise TransferError("failed", f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise TransferError("invalid", f"{path} is a directory: copy it with `osctl cp`")
    if not stat.S_ISREG(st.st_mode):
        raise TransferError("invalid", f"{path} is not a regular file (a device, fifo or socket)")
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed by the generator below
    except OSError as exc:
        raise TransferError("failed", f"cannot read {path}: {exc.strerror}") from None
    return _chunks(f, active)


def _chunks(f: IO[bytes], active: Callable[[], bool]) -> Iterator[bytes]:
    with f:
        while active() and (data := f.read(CHUNK)):
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


def tar_stream(path: str, active: Callable[[], bool] = lambda: True) -> Iterator[bytes]:
    """``path`` (a file or a whole tree) as an uncompressed PAX tar, in chunks of about :data:`CHUNK`.

    Entries are named after the path's last component (``/var/log`` -> ``log/...``). Sockets
    are left out; device nodes and fifos go in as such (their content is never read).
    """
    p = _check_path(path)
    arcname = p.name or "rootfs"
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_CHUNKS)
    stop = threading.Event()

    def work() -> None:
        try:
            with tarfile.open(
                fileobj=cast(IO[bytes], _QueueWriter(q, stop)),
                mode="w|",
                bufsize=CHUNK,
                format=tarfile.PAX_FORMAT,
            ) as tar:
                tar.add(str(p), arcname=arcname, recursive=True)
        except _Cancelled:
            return
        except BaseException as exc:
            _put(q, stop, TransferError("failed", f"cannot copy {path}: {exc}"))
            return
        _put(q, stop, None)

    worker = threading.Thread(target=work, name=f"tar {path}", daemon=True)
    return _drain(q, stop, worker, active)


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
