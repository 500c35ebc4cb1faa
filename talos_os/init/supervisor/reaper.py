"""Who calls ``waitpid``: reaping children (orphans too, as PID 1 must) and running a tool to completion.

PID 1 must reap every child, so there one :class:`ChildReaper` owns ``waitpid(-1)`` and every
subprocess of the init is spawned, signalled and waited for through it (:func:`run` replaces
``subprocess.run``); elsewhere (tests, a dev box) :class:`WaitReaper` waits for each child on
its own and leaves other children alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Protocol

log = logging.getLogger(__name__)


class Reaper(Protocol):
    """Who calls waitpid: a subprocess is spawned, signalled and waited for through it."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def spawn(self, popen: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]: ...
    def signal(self, proc: subprocess.Popen[bytes], sig: int, group: bool = True) -> None: ...
    def wait(self, proc: subprocess.Popen[bytes]) -> int: ...
    def reap_children(self) -> list[tuple[int, int]]: ...


def _kill(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            try:
                os.killpg(pid, sig)
                return
            except ProcessLookupError:
                pass  # the child left its group (setpgid): fall back to the process itself
        os.kill(pid, sig)


class WaitReaper:
    """Not PID 1: each child is waited for by pid, so children of other code are never stolen."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def spawn(self, popen: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        return popen()

    def signal(self, proc: subprocess.Popen[bytes], sig: int, group: bool = True) -> None:
        if proc.poll() is None:
            _kill(proc.pid, sig, group)

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        return proc.wait()

    def reap_children(self) -> list[tuple[int, int]]:
        return []


class ChildReaper:
    """PID 1 (or a child subreaper): the only caller of ``waitpid``, reaping orphans too.

    ``reap_children()`` loops ``waitpid(-1, WNOHANG)`` and hands each status to the service that
    owns the pid; statuses of other pids (orphans reparented to init) are dropped after
    ``on_orphan``. Spawning holds the same lock as reaping, so a child that dies at once is
    registered before anyone can reap it. Popen.poll/wait/send_signal/communicate must never be
    used on these children (they would call waitpid behind our back): everything goes through
    here, including other code of the init that runs a tool (use :func:`run`).

    The thread started by :meth:`start` blocks in ``waitid(P_ALL, WEXITED | WNOWAIT)``, which
    sees any child exit without consuming it, then reaps under the lock. No signal handler is
    involved (Python runs those in the main thread only, whenever it gets to them); with no
    children at all it sleeps until :meth:`spawn` (or :meth:`notify`) wakes it.
    """

    def __init__(
        self,
        *,
        on_orphan: Callable[[int, int], None] | None = None,
        poll_interval: float = 1.0,
        waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid,
    ) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._tracked: set[int] = set()
        self._status: dict[int, int] = {}
        self._on_orphan = on_orphan
        self._poll_interval = poll_interval
        self._waitpid = waitpid
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the reaper thread (it may stay blocked in waitid while unrelated children live)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(0.5)
            self._thread = None

    def notify(self) -> None:
        """Wake the reaper thread if it sleeps for lack of children (safe from a signal handler)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                self._wake.wait(self._poll_interval)
                self._wake.clear()
                continue
            try:
                self.reap_children()
            except Exception:  # never let the reaper die: zombies would pile up
                log.exception("reaping children failed")

    def spawn(self, popen: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._cond:
            proc = popen()
            self._tracked.add(proc.pid)
        self._wake.set()
        return proc

    def signal(self, proc: subprocess.Popen[bytes], sig: int, group: bool = True) -> None:
        with self._cond:  # holding the lock: the pid cannot be reaped (and reused) under us
            if proc.pid in self._tracked and proc.pid not in self._status:
                _kill(proc.pid, sig, group)

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        with self._cond:
            self._cond.wait_for(lambda: proc.pid in self._status)
            code = self._status.pop(proc.pid)
            self._tracked.discard(proc.pid)
        proc.returncode = code  # so Popen never waits for it itself
        return code

    def reap_children(self) -> list[tuple[int, int]]:
        """Reap every exited child now; returns ``(pid, exit code)`` pairs (orphans included)."""
        reaped: list[tuple[int, int]] = []
        orphans: list[tuple[int, int]] = []
        with self._cond:
            while True:
                try:
                    pid, status = self._waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                code = os.waitstatus_to_exitcode(status)
                reaped.append((pid, code))
                if pid in self._tracked:
                    self._status[pid] = code
                else:
                    orphans.append((pid, code))
            if reaped:
                self._cond.notify_all()
        if self._on_orphan is not None:
            for pid, code in orphans:
                self._on_orphan(pid, code)
        return reaped


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> None:
    """Make this process inherit its orphaned descendants, like PID 1 (for running init off PID 1)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def run(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool to completion through ``reaper``, capturing its output.

    The init's replacement for ``subprocess.run``: as PID 1 that would race the reaper for the
    exit status (and lose it). Raises ``subprocess.TimeoutExpired`` after killing the tool.
    """

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            close_fds=True,
        )

    proc = reaper.spawn(popen)
    out: dict[str, bytes] = {}

    def drain(key: str, stream: IO[bytes]) -> None:
        with stream:
            out[key] = stream.read()

    def feed(stream: IO[bytes], data: bytes) -> None:
        with contextlib.suppress(BrokenPipeError), stream:
            stream.write(data)

    threads = []
    for key, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert stream is not None
        threads.append(threading.Thread(target=drain, args=(key, stream), daemon=True))
    if input is not None:
        assert proc.stdin is not None
        threads.append(threading.Thread(target=feed, args=(proc.stdin, input), daemon=True))
    for t in threads:
        t.start()
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        reaper.signal(proc, signal.SIGKILL, group=False)

    timer = threading.Timer(timeout, kill) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        code = reaper.wait(proc)
    finally:
        if timer is not None:
            timer.cancel()
    for t in threads:
        t.join()
    if expired.is_set():
        assert timeout is not None
        raise subprocess.TimeoutExpired(list(argv), timeout, out.get("stdout"), out.get("stderr"))
    return subprocess.CompletedProcess(list(argv), code, out.get("stdout", b""), out.get("stderr", b""))
