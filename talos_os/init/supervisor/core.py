r"""The supervisor: starts services in dependency order, watches them, restarts and stops them.

Each service runs in its own thread through a small state machine::

    waiting -> preparing -> running -> finished | failed | (waiting again, after a backoff)
                                    \-> stopping -> stopped

A service waits until its dependencies are running (or have finished, for one-shots) and its
start conditions hold, runs, and is restarted per its policy with jittered exponential backoff.
Starting a process goes through a :class:`~talos_os.init.supervisor.model.Runner` and collecting
exit statuses through a :class:`~talos_os.init.supervisor.reaper.Reaper`. Output (stdout and
stderr merged) goes to a :class:`~talos_os.init.supervisor.logbuffer.LogBuffer` per service,
under ``log_dir``.

Given a ``cgroup_root``, each service runs in its own cgroup v2 group below it (see
:mod:`talos_os.lib.cgroups`), which is where :meth:`Supervisor.usage` reads CPU and memory.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from talos_os.init.supervisor.logbuffer import LogBuffer
from talos_os.init.supervisor.model import (
    Handle,
    Runner,
    ServiceEvent,
    ServiceInfo,
    ServiceSpec,
    State,
)
from talos_os.init.supervisor.process import ProcessRunner
from talos_os.init.supervisor.reaper import Reaper, WaitReaper
from talos_os.init.supervisor.restart import Verdict, decide_restart
from talos_os.lib.cgroups import CgroupTree, Usage, proc_usage

log = logging.getLogger(__name__)

DEFAULT_LOG_DIR = Path("/var/log")
MAX_LINE = 16 * 1024


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
        """The service's thread: wait, prepare, run, decide (:func:`decide_restart`), maybe back off and loop."""
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
                decision = decide_restart(
                    spec,
                    code,
                    ran,
                    restarts=svc.restarts,
                    streak=streak,
                    stop_requested=self._stopping(svc),
                )
                svc.restarts = decision.restarts
                streak = decision.streak
                self._set(svc, decision.state, decision.message(outcome))
                if decision.verdict != Verdict.RESTART:
                    return
                deadline = time.monotonic() + decision.delay
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
