"""Opens files for ``os:reader`` callers in a helper process that has none of root's power.

Why a process and not a path check: what a file reveals can depend on who opens it
(``/proc/kallsyms`` shows kernel addresses only to CAP_SYSLOG, ``/proc/PID/maps`` only to whoever
may ptrace PID), and a path can lead anywhere (``/proc/PID/root/...`` enters another mount
namespace, ``/proc/PID/fd/N`` reaches memfds and deleted files). So osd asks a helper that runs as
an unprivileged uid with no capabilities to open the file, beneath one allow-listed tree, with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``: the kernel refuses magic links and any
symlink or ``..`` that leaves the tree, and permission checks are those of a nobody. The helper
hands the open descriptor back over a unix socket (SCM_RIGHTS); osd only reads from it, and what
the kernel decided at open time (with the helper's credentials) stays with the descriptor.

Run as ``python3 -m talos_os.osd.opener FD UID GID``: it starts as root (to import itself), then
drops to ``UID``/``GID`` with no supplementary groups before it serves a single request.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

#: The helper's uid and gid: an id no process or file on the node has, so "same owner" never applies.
READER_ID = 0xFFFF_FFFD
SYS_OPENAT2 = 437  # the same number on every architecture (it postdates the per-arch tables)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_REPLY = struct.Struct("=i")  # errno, 0 when an fd comes with it
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
MAX_REQUEST = 8192
READY = b"ready"


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)


def openat2_beneath(tree: str, relative: str) -> int:
    """Open ``relative`` read-only beneath ``tree``; no magic links, nothing that leaves the tree.

    Raises OSError (EXDEV when the path leaves the tree, ELOOP for a magic link). Never blocks on a
    fifo (O_NONBLOCK) and never becomes a controlling terminal.
    """
    if "\0" in tree or "\0" in relative:
        raise OSError(errno.EINVAL, "a path holds a NUL character")
    root = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(
            os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            0,
            RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        )
        name = os.fsencode(relative or ".")
        fd = _libc.syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_int(root),
            ctypes.c_char_p(name),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return int(fd)
    finally:
        os.close(root)


def _drop(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good: all capabilities go with the last zero uid."""
    _libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # die with osd
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def serve(sock: socket.socket) -> None:
    """Answer ``tree NUL relative`` requests with an errno and, on success, the descriptor."""
    while True:
        request = sock.recv(MAX_REQUEST)
        if not request:
            return
        tree, _, relative = request.partition(b"\0")
        try:
            fd = openat2_beneath(os.fsdecode(tree), os.fsdecode(relative))
        except OSError as exc:
            sock.send(_REPLY.pack(exc.errno or errno.EIO))
            continue
        try:
            socket.send_fds(sock, [_REPLY.pack(0)], [fd])
        finally:
            os.close(fd)


def main(argv: list[str]) -> int:
    fd, uid, gid = (int(a) for a in argv)
    sock = socket.socket(fileno=fd)
    _drop(uid, gid)
    sock.send(READY)
    serve(sock)
    return 0


class Opener:
    """osd's end of the helper: starts it on first use, restarts it if it dies, one request at a time."""

    def __init__(self, uid: int = READER_ID, gid: int = READER_ID, timeout: float = 5.0) -> None:
        self.uid = uid
        self.gid = gid
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "talos_os.osd.opener",
                    str(theirs.fileno()),
                    str(self.uid),
                    str(self.gid),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
        ours.settimeout(max(self.timeout, 30.0))  # the first answer waits for Python to start
        try:
            if ours.recv(len(READY)) != READY:
                raise OSError(errno.EIO, "the reader's file opener did not start")
        except OSError:
            ours.close()
            self._stop_proc()
            raise
        ours.settimeout(self.timeout)
        self._sock = ours
        return ours

    def warm(self) -> None:
        """Start the helper now (Python takes a while to start on a slow node), not at the first Read."""
        try:
            with self._lock:
                if self._sock is None:
                    self._start()
        except OSError as exc:
            log.warning("the reader's file opener did not start (the first Read retries): %s", exc)

    def open(self, tree: str, relative: str) -> int:
        """A read-only descriptor for ``tree/relative``, opened with a reader's (lack of) privilege."""
        request = os.fsencode(tree) + b"\0" + os.fsencode(relative)
        if len(request) > MAX_REQUEST or b"\0" in request[len(os.fsencode(tree)) + 1 :]:
            raise OSError(errno.ENAMETOOLONG if len(request) > MAX_REQUEST else errno.EINVAL, "bad path")
        with self._lock:
            sock = self._sock or self._start()
            try:
                sock.send(request)
                data, fds, _flags, _addr = socket.recv_fds(sock, _REPLY.size, 1)
            except OSError:
                self.close_locked()  # a hung or dead helper: the next call starts a new one
                raise
        if len(data) != _REPLY.size:
            for fd in fds:
                os.close(fd)
            raise OSError(errno.EIO, "the reader's file opener hung up")
        (code,) = _REPLY.unpack(data)
        if code:
            for fd in fds:
                os.close(fd)
            raise OSError(code, os.strerror(code))
        if len(fds) != 1:
            raise OSError(errno.EIO, "the reader's file opener sent no descriptor")
        return fds[0]

    def _stop_proc(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._stop_proc()

    def close(self) -> None:
        with self._lock:
            self.close_locked()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
