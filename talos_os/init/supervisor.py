r"""The service supervisor of the init (PID 1).

Each service runs in its own thread through a small state machine::

    waiting -> preparing -> running -> finished | failed | (waiting again, after a backoff)
                                    \-> stopping -> stopped

A service waits until its dependencies are running (or have finished, for one-shots) and its
start conditions hold, runs, and is restarted per its policy with jittered exponential backoff.
Starting a process goes through a :class:`Runner` (plain subprocesses now, containerd later)
and collecting exit statuses through a :class:`Reaper`: PID 1 must reap every child, orphans
included, so there one :class:`ChildReaper` owns ``waitpid(-1)``; elsewhere (tests, a dev box)
:class:`WaitReaper` waits for each child on its own and leaves other children alone.

Output (stdout and stderr merged) goes to a :class:`LogBuffer` per service: a bounded ring in
memory that osd can follow with a cursor, and a size-bounded, rotated file under ``log_dir``.

Given a ``cgroup_root``, each service runs in its own cgroup v2 group below it (see
:mod:`talos_os.init.cgroups`), which is where :meth:`Supervisor.usage` reads CPU and memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import itertools
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from talos_os.init.cgroups import CgroupTree, Usage, join_and_exec, proc_usage
from talos_os.init.fetch import backoff_delay
from talos_os.redact import LineRedactor

log = logging.getLogger(__name__)

DEFAULT_LOG_DIR = Path("/var/log")
MAX_LINE = 16 * 1024


class State(enum.StrEnum):
    WAITING = "waiting"
    PREPARING = "preparing"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


# A service in one of these states has no thread working for it.
TERMINAL = frozenset({State.FINISHED, State.FAILED, State.STOPPED})


class Restart(enum.StrEnum):
    ALWAYS = "always"  # restart whatever the exit status (daemons)
    ON_FAILURE = "on-failure"  # restart until it exits 0 (one-shots that may need several tries)
    NEVER = "never"  # run once; exit 0 is finished, anything else failed


@dataclass(frozen=True)
class Condition:
    """A start condition, polled every ``interval`` seconds until it holds."""

    description: str
    check: Callable[[], bool]
    interval: float = 0.5


def file_exists(path: str | Path, interval: float = 0.5) -> Condition:
    """Holds once ``path`` exists (a socket another service creates, a mounted file system...)."""
    p = Path(path)
    return Condition(f"file {p} exists", p.exists, interval)


@dataclass(frozen=True)
class ServiceSpec:
    """What to run and how to treat it; immutable so a restart always runs the same thing."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    depends: Sequence[str] = ()
    conditions: Sequence[Condition] = ()
    restart: Restart = Restart.ON_FAILURE
    oneshot: bool = False  # dependents wait for it to finish (exit 0), not just to start
    max_restarts: int | None = None  # None: keep trying forever
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    backoff_jitter: float = 0.2
    stable_after: float = 30.0  # a run at least this long resets the backoff
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0  # grace between stop_signal and SIGKILL
    log_lines: int = 1000
    log_bytes: int = 256 * 1024
    log_file_bytes: int = 1024 * 1024
    log_backups: int = 1
    runner: Runner | None = None  # None: the supervisor's runner


@dataclass(frozen=True)
class ServiceEvent:
    time: float
    state: State
    message: str


@dataclass(frozen=True)
class ServiceInfo:
    """A snapshot of one service for listings (osctl ps, the control socket)."""

    name: str
    state: State
    pid: int | None
    restarts: int
    exit_code: int | None
    message: str
    since: float
    depends: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": str(self.state),
            "pid": self.pid,
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "message": self.message,
            "since": self.since,
            "depends": list(self.depends),
        }


# --- logs -----------------------------------------------------------------------------------------


class LogBuffer:
    """The last lines of a service's output in memory, plus a size-bounded log file with rotation.

    Lines are numbered from 0; a cursor is the number of the next line to read, so a follower
    calls ``read_since(cursor)`` and ``wait_for_more(cursor, timeout)`` in a loop. A follower too
    slow for the ring just misses the evicted lines (the file keeps more).
    """

    def __init__(
        self,
        *,
        max_lines: int = 1000,
        max_bytes: int = 256 * 1024,
        path: Path | None = None,
        file_max_bytes: int = 1024 * 1024,
        backups: int = 1,
    ) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max_bytes
        self.path = path
        self.file_max_bytes = file_max_bytes
        self.backups = backups
        self.file_error: str | None = None
        self._ring: deque[str] = deque()
        self._ring_bytes = 0
        self._first = 0  # number of the oldest line in the ring
        self._next = 0  # number the next appended line will get
        self._closed = False
        self._cond = threading.Condition()
        self._file: BinaryIO | None = None
        self._file_size = 0
        self._redact = LineRedactor()

    @property
    def cursor(self) -> int:
        """The cursor of the next line: a follower that starts here sees only new lines."""
        with self._cond:
            return self._next

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (the supervisor shut down): no new lines will come."""
        with self._cond:
            return self._closed

    def append(self, line: str) -> None:
        with self._cond:
            line = self._redact(line)  # readers may read service logs: no key or token gets in
            self._ring.append(line)
            self._ring_bytes += len(line)
            self._next += 1
            while len(self._ring) > 1 and (
                len(self._ring) > self.max_lines or self._ring_bytes > self.max_bytes
            ):
                self._ring_bytes -= len(self._ring.popleft())
                self._first += 1
            self._write_file(line)
            self._cond.notify_all()

    def lines(self) -> list[str]:
        """Everything still in the ring, oldest first."""
        with self._cond:
            return list(self._ring)

    def read_since(self, cursor: int) -> tuple[list[str], int]:
        """Lines from ``cursor`` on (or from the oldest kept line) and the cursor after them."""
        _start, lines, end = self.page(cursor)
        return lines, end

    def page(self, cursor: int, max_lines: int | None = None) -> tuple[int, list[str], int]:
        """At most ``max_lines`` (default: all) lines from ``cursor`` (or the oldest kept line).

        Returns the number of the first line returned, the lines, and the cursor of the next line
        the buffer will get: a reader that pages through a big ring copies only one page each time.
        """
        with self._cond:
            start = min(max(cursor, self._first), self._next)
            offset = start - self._first
            stop = None if max_lines is None else offset + max(0, max_lines)
            return start, list(itertools.islice(self._ring, offset, stop)), self._next

    def wait_for_more(self, cursor: int, timeout: float | None) -> bool:
        """Block until a line past ``cursor`` exists (True) or the timeout/close comes (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._next > cursor or self._closed, timeout)
            return self._next > cursor

    def close(self) -> None:
        """Wake followers and close the file (appends after this still reach the ring)."""
        with self._cond:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
            self._cond.notify_all()

    def _write_file(self, line: str) -> None:
        if self.path is None or self._closed or self.file_error is not None:
            return
        data = (line + "\n").encode("utf-8", "replace")
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across appends
                self._file_size = self._file.tell()
            if self._file_size > 0 and self._file_size + len(data) > self.file_max_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            self._file_size += len(data)
        except OSError as exc:
            # A full or read-only /var must not take the service (or init) down: keep the ring only.
            self.file_error = f"{self.path}: {exc}"
            log.warning("log file disabled: %s", self.file_error)
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def _rotate(self) -> None:
        assert self.path is not None and self._file is not None
        self._file.close()
        self._file = None
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "wb")  # noqa: SIM115 - kept open across appends
        self._file_size = 0


# --- running processes ----------------------------------------------------------------------------


class Handle(Protocol):
    """One run of a service, as a runner started it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def output(self) -> IO[bytes] | None:
        """Merged stdout/stderr for the supervisor to capture, or None if the runner logs itself."""
        ...

    def signal(self, sig: int) -> None:
        """Deliver ``sig`` (to the whole process group); a no-op once the run has ended."""
        ...

    def wait(self) -> int:
        """Block until the run ends; the exit code, negative for a signal (as ``Popen.returncode``)."""
        ...


class Runner(Protocol):
    """Starts services: :class:`ProcessRunner` now, a containerd runner later."""

    def prepare(self, spec: ServiceSpec) -> None:
        """Work before the start that may fail and be retried (pull an image, check the binary)."""
        ...

    def start(self, spec: ServiceSpec) -> Handle: ...


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


class ProcessHandle:
    """A subprocess run: signalled and waited for through the reaper."""

    def __init__(self, proc: subprocess.Popen[bytes], reaper: Reaper) -> None:
        self._proc = proc
        self._reaper = reaper

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def output(self) -> IO[bytes] | None:
        return self._proc.stdout

    def signal(self, sig: int) -> None:
        self._reaper.signal(self._proc, sig)

    def wait(self) -> int:
        return self._reaper.wait(self._proc)


class ProcessRunner:
    """Runs a service as a plain subprocess in its own session (so it is signalled as a group).

    With ``cgroups``, the child joins its service's group before the program runs.
    """

    def __init__(self, reaper: Reaper | None = None, cgroups: CgroupTree | None = None) -> None:
        self.reaper: Reaper = reaper or WaitReaper()
        self.cgroups = cgroups

    def prepare(self, spec: ServiceSpec) -> None:
        if not spec.argv:
            raise ValueError(f"service {spec.name}: empty argv")

    def start(self, spec: ServiceSpec) -> Handle:
        procs_fd = self.cgroups.open_procs(spec.name) if self.cgroups is not None else None
        try:
            argv = list(spec.argv) if procs_fd is None else join_and_exec(procs_fd, spec.argv, spec.env)

            def popen() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=dict(spec.env) if spec.env is not None else None,
                    cwd=spec.cwd,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(procs_fd,) if procs_fd is not None else (),
                )

            return ProcessHandle(self.reaper.spawn(popen), self.reaper)
        finally:
            if procs_fd is not None:
                os.close(procs_fd)


# --- the supervisor -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Service:
    spec: ServiceSpec
    log: LogBuffer
    events: deque[ServiceEvent]
    state: State = State.STOPPED
    message: str = "not started"
    since: float = 0.0
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    handle: Handle | None = None
    stop_requested: bool = False
    thread: threading.Thread | None = None
    pumps: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    """Starts, watches, restarts and stops services; thread-safe."""

    def __init__(
        self,
        *,
        runner: Runner | None = None,
        reaper: Reaper | None = None,
        log_dir: Path | str | None = DEFAULT_LOG_DIR,
        history: int = 100,
        clock: Callable[[], float] = time.time,
        cgroup_root: Path | str | None = None,
    ) -> None:
        self.reaper: Reaper = reaper or WaitReaper()
        self.cgroups = CgroupTree(cgroup_root) if cgroup_root is not None else None
        self.runner: Runner = runner or ProcessRunner(self.reaper, self.cgroups)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._history = history
        self._clock = clock
        self._cond = threading.Condition(threading.RLock())
        self._services: dict[str, _Service] = {}
        self._shutting_down = False

    # --- registration ----------------------------------------------------------------------------

    def add(self, spec: ServiceSpec) -> None:
        """Register a service (dependencies may be added later; :meth:`start` checks them)."""
        with self._cond:
            if spec.name in self._services:
                raise ValueError(f"service {spec.name} is already registered")
            if not spec.name or "/" in spec.name or spec.name.startswith("."):
                raise ValueError(f"invalid service name {spec.name!r}")
            path = self.log_dir / f"{spec.name}.log" if self.log_dir is not None else None
            buf = LogBuffer(
                max_lines=spec.log_lines,
                max_bytes=spec.log_bytes,
                path=path,
                file_max_bytes=spec.log_file_bytes,
                backups=spec.log_backups,
            )
            svc = _Service(spec, buf, deque(maxlen=self._history))
            self._services[spec.name] = svc
            self._set(svc, State.STOPPED, "registered")

    def _get(self, name: str) -> _Service:
        try:
            return self._services[name]
        except KeyError:
            raise KeyError(f"no service named {name!r}") from None

    def order(self) -> list[str]:
        """Names in dependency order (dependencies first); raises ValueError on a cycle or unknown name."""
        with self._cond:
            specs = {n: s.spec for n, s in self._services.items()}
        done: list[str] = []
        mark: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(name: str, path: tuple[str, ...]) -> None:
            if mark.get(name) == 2:
                return
            if mark.get(name) == 1:
                raise ValueError("dependency cycle: " + " -> ".join((*path, name)))
            mark[name] = 1
            for dep in specs[name].depends:
                if dep not in specs:
                    raise ValueError(f"service {name} depends on unknown service {dep}")
                visit(dep, (*path, name))
            mark[name] = 2
            done.append(name)

        for name in specs:
            visit(name, ())
        return done

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every registered service (each waits for its own dependencies)."""
        order = self.order()
        if self.cgroups is not None:
            self.cgroups.setup()
        self.reaper.start()
        for name in order:
            self.start_service(name)

    def start_service(self, name: str) -> bool:
        """Start one service; False if it is already active (waiting, running...)."""
        with self._cond:
            svc = self._get(name)
            if self._shutting_down:
                raise RuntimeError("the supervisor is shutting down")
            if svc.thread is not None and svc.thread.is_alive():
                return False
            missing = [d for d in svc.spec.depends if d not in self._services]
            if missing:
                raise ValueError(f"service {name} depends on unknown service {', '.join(missing)}")
            svc.stop_requested = False
            svc.restarts = 0
            svc.exit_code = None
            self._set(svc, State.WAITING, "start requested")
            svc.thread = threading.Thread(target=self._run, args=(svc,), name=f"svc-{name}", daemon=True)
            svc.thread.start()
            return True

    def stop_service(self, name: str, timeout: float | None = None) -> bool:
        """Stop one service: its stop signal, then SIGKILL after ``timeout`` (default: the spec's).

        Returns True once the service's thread is gone.
        """
        with self._cond:
            svc = self._get(name)
            svc.stop_requested = True
            handle = svc.handle
            if handle is not None:
                sig = svc.spec.stop_signal
                self._set(svc, State.STOPPING, f"sending {signal.Signals(sig).name}")
                handle.signal(sig)
            self._cond.notify_all()
            thread = svc.thread
        if thread is None:
            return True
        thread.join(svc.spec.stop_timeout if timeout is None else timeout)
        if thread.is_alive():
            with self._cond:
                handle = svc.handle
                if handle is not None:
                    self._event(svc, "did not stop in time: sending SIGKILL")
                    handle.signal(signal.SIGKILL)
            thread.join(5.0)
        return not thread.is_alive()

    def restart_service(self, name: str, timeout: float | None = None) -> bool:
        """Stop (if active) and start again; False if the old run could not be stopped."""
        if not self.stop_service(name, timeout):
            return False
        return self.start_service(name)

    def shutdown(
        self, *, timeout: float | None = None, hooks: Sequence[Callable[[], None]] = ()
    ) -> list[BaseException]:
        """Stop every service, dependents before their dependencies, then run ``hooks`` in order.

        Hooks are sync, unmount, reboot... wired by the caller. A failing hook is logged and
        the next one still runs (the final reboot must happen); the errors are returned.
        """
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()
        for wave in self.stop_waves():
            threads = [
                threading.Thread(target=self.stop_service, args=(name, timeout), name=f"stop-{name}")
                for name in wave
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for svc in list(self._services.values()):
            for pump in svc.pumps:
                pump.join(1.0)
            svc.log.close()
        self.reaper.stop()
        errors: list[BaseException] = []
        for hook in hooks:
            try:
                hook()
            except Exception as exc:
                log.exception("shutdown hook %r failed", hook)
                errors.append(exc)
        return errors

    def stop_waves(self) -> list[list[str]]:
        """Services grouped for stopping: each wave only after everything that depends on it.

        Never raises (shutdown must go on): unknown dependencies are ignored and the members of
        a dependency cycle are stopped together.
        """
        with self._cond:
            specs = {n: s.spec for n, s in self._services.items()}
        dependents: dict[str, set[str]] = {n: set() for n in specs}
        for name, spec in specs.items():
            for dep in spec.depends:
                if dep in dependents:
                    dependents[dep].add(name)
        waves: list[list[str]] = []
        stopped: set[str] = set()
        remaining = list(specs)
        while remaining:
            wave = [n for n in remaining if dependents[n] <= stopped] or remaining
            waves.append(wave)
            stopped.update(wave)
            remaining = [n for n in remaining if n not in stopped]
        return waves

    # --- queries ---------------------------------------------------------------------------------

    def services(self) -> list[ServiceInfo]:
        with self._cond:
            return [self._info(s) for s in self._services.values()]

    def info(self, name: str) -> ServiceInfo:
        with self._cond:
            return self._info(self._get(name))

    def _info(self, svc: _Service) -> ServiceInfo:
        return ServiceInfo(
            name=svc.spec.name,
            state=svc.state,
            pid=svc.pid,
            restarts=svc.restarts,
            exit_code=svc.exit_code,
            message=svc.message,
            since=svc.since,
            depends=tuple(svc.spec.depends),
        )

    def events(self, name: str) -> list[ServiceEvent]:
        """The service's recent state changes, oldest first (bounded by ``history``)."""
        with self._cond:
            return list(self._get(name).events)

    def logs(self, name: str) -> LogBuffer:
        with self._cond:
            return self._get(name).log

    def stats(self) -> dict[str, int | None]:
        """The pid of each service's current run (None when not running)."""
        with self._cond:
            return {n: s.pid for n, s in self._services.items()}

    def usage(self) -> dict[str, tuple[int | None, Usage | None]]:
        """Per service: the current pid and its CPU/memory (from its cgroup, else /proc; None if neither)."""
        result: dict[str, tuple[int | None, Usage | None]] = {}
        for name, pid in self.stats().items():
            usage = self.cgroups.usage(name) if self.cgroups is not None else None
            if usage is None and pid is not None:
                usage = proc_usage(pid)
            result[name] = (pid, usage)
        return result

    def wait_for(self, name: str, states: Iterable[State], timeout: float | None = None) -> bool:
        """Block until service ``name`` is in one of ``states``; False on timeout."""
        wanted = frozenset(states)
        with self._cond:
            svc = self._get(name)
            return self._cond.wait_for(lambda: svc.state in wanted, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``predicate()`` holds, re-checked at every state change or event; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def reap_children(self) -> list[tuple[int, int]]:
        """Reap exited children now (PID 1: orphans included); see :class:`ChildReaper`."""
        return self.reaper.reap_children()

    # --- internals -------------------------------------------------------------------------------

    def _set(self, svc: _Service, state: State, message: str) -> None:
        with self._cond:
            svc.state = state
            svc.message = message
            svc.since = self._clock()
            svc.events.append(ServiceEvent(svc.since, state, message))
            self._cond.notify_all()
        log.info("service %s: %s (%s)", svc.spec.name, state, message)

    def _event(self, svc: _Service, message: str) -> None:
        """Record a note in the history without changing state."""
        with self._cond:
            svc.message = message
            svc.events.append(ServiceEvent(self._clock(), svc.state, message))
            self._cond.notify_all()

    def _stopping(self, svc: _Service) -> bool:
        return svc.stop_requested or self._shutting_down

    def _check_conditions(self, svc: _Service) -> list[str]:
        """Descriptions of the start conditions that do not hold (checked without the lock held)."""
        unmet = []
        for cond in svc.spec.conditions:
            try:
                ok = bool(cond.check())
            except Exception as exc:
                ok = False
                log.debug("condition %r of %s raised %r", cond.description, svc.spec.name, exc)
            if not ok:
                unmet.append(cond.description)
        return unmet

    def _wait_ready(self, svc: _Service) -> bool:
        """Wait for dependencies and conditions; False if the service was stopped or cannot start."""
        last: list[str] | None = None
        poll = min((c.interval for c in svc.spec.conditions), default=None)
        while True:
            with self._cond:
                while True:
                    if self._stopping(svc):
                        self._set(svc, State.STOPPED, "stopped while waiting")
                        return False
                    blocked = []
                    for dep in svc.spec.depends:
                        other = self._services[dep]
                        if other.state == State.FAILED:
                            self._set(svc, State.FAILED, f"dependency {dep} failed")
                            return False
                        ready = (State.FINISHED,) if other.spec.oneshot else (State.RUNNING, State.FINISHED)
                        if other.state not in ready:
                            blocked.append(f"service {dep}")
                    if not blocked:
                        break
                    if blocked != last:
                        self._event(svc, "waiting for " + ", ".join(blocked))
                        last = blocked
                    self._cond.wait()
            unmet = self._check_conditions(svc)
            if not unmet:
                return True
            with self._cond:
                if unmet != last:
                    self._event(svc, "waiting for " + ", ".join(unmet))
                    last = unmet
                if not self._stopping(svc):
                    self._cond.wait(poll)

    def _pump(self, svc: _Service, stream: IO[bytes]) -> None:
        try:
            for raw in iter(lambda: stream.readline(MAX_LINE), b""):
                svc.log.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _run(self, svc: _Service) -> None:
        """The service's thread: wait, prepare, run, decide, maybe back off and loop."""
        spec = svc.spec
        runner = spec.runner or self.runner
        streak = 0  # consecutive short runs, for the backoff
        while True:
            if not self._wait_ready(svc):
                return
            self._set(svc, State.PREPARING, "preparing")
            code: int | None = None
            ran = 0.0
            outcome = ""
            try:
                runner.prepare(spec)
            except Exception as exc:
                outcome = f"prepare failed: {exc}"
            else:
                handle: Handle | None = None
                with self._cond:
                    if self._stopping(svc):
                        self._set(svc, State.STOPPED, "stopped before start")
                        return
                    try:
                        handle = runner.start(spec)
                    except Exception as exc:
                        outcome = f"start failed: {exc}"
                    else:
                        svc.handle = handle
                        svc.pid = handle.pid
                        self._set(svc, State.RUNNING, f"started (pid {handle.pid})")
                if handle is not None:
                    started = time.monotonic()
                    stream = handle.output
                    if stream is not None:
                        pump = threading.Thread(
                            target=self._pump, args=(svc, stream), name=f"log-{spec.name}", daemon=True
                        )
                        svc.pumps = [p for p in svc.pumps if p.is_alive()] + [pump]
                        pump.start()
                    code = handle.wait()
                    ran = time.monotonic() - started
                    if stream is not None:
                        # A grandchild may hold the pipe open: do not wait for its EOF forever.
                        svc.pumps[-1].join(1.0)
                    with self._cond:
                        svc.handle = None
                        svc.pid = None
                        svc.exit_code = code
                    outcome = _describe_exit(code)
                    if self.cgroups is not None:
                        self.cgroups.remove(spec.name)  # stays while leftover processes live in it
            with self._cond:
                if self._stopping(svc):
                    self._set(svc, State.STOPPED, f"stopped ({outcome})")
                    return
                if code == 0 and spec.restart != Restart.ALWAYS:
                    self._set(svc, State.FINISHED, outcome)
                    return
                if spec.restart == Restart.NEVER:
                    self._set(svc, State.FAILED, outcome)
                    return
                if spec.max_restarts is not None and svc.restarts >= spec.max_restarts:
                    self._set(svc, State.FAILED, f"{outcome}; giving up after {svc.restarts} restarts")
                    return
                streak = 1 if ran >= spec.stable_after else streak + 1
                delay = backoff_delay(
                    streak, base=spec.backoff_base, cap=spec.backoff_cap, jitter=spec.backoff_jitter
                )
                svc.restarts += 1
                self._set(svc, State.WAITING, f"{outcome}; restart {svc.restarts} in {delay:.2f}s")
                deadline = time.monotonic() + delay
                while not self._stopping(svc):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping(svc):
                    self._set(svc, State.STOPPED, "stopped during restart backoff")
                    return


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
