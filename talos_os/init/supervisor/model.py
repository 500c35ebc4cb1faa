"""The service model: what a service is, the states it goes through, what a runner must provide.

Plain data and protocols, no threads or processes: the control socket, osd and the tests share
these types without depending on how the supervisor runs things.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol


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


# --- what runs a service -------------------------------------------------------------------------


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
