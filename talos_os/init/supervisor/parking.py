"""Services launched before the init needs them, so that their imports overlap the init's own.

Under software emulation a Python service's start is mostly its imports (osd: 17-19 s of 25 s),
and the init spends about as long on its own before the node is ready; with two CPUs both can
import at once. A *parked* service is launched at the very start of stage 2 with
``TALOS_PARKED=1`` and a pipe on its stdin: it imports everything, then blocks reading one line.
When the supervisor later starts that service (its dependencies and conditions met), the
:class:`ParkingRunner` hands the parked process over: it joins the service's cgroup and gets
``go``. A parked process that died, or whose command no longer matches the spec, is replaced by a
normal start; restarts are normal starts. :meth:`ParkingRunner.close` sends end-of-file to the
processes never handed over, which tells them to exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from talos_os.init.supervisor.model import Handle, Runner, ServiceSpec
from talos_os.init.supervisor.process import ProcessHandle
from talos_os.init.supervisor.reaper import Reaper
from talos_os.lib.cgroups import CgroupTree
from talos_os.lib.parked import GO, PARKED_ENV

log = logging.getLogger(__name__)


@dataclass
class _Parked:
    spec: ServiceSpec
    proc: subprocess.Popen[bytes]


def same_command(a: ServiceSpec, b: ServiceSpec) -> bool:
    """Whether a process launched for ``a`` runs what ``b`` asks for (argv, environment, directory)."""
    return list(a.argv) == list(b.argv) and dict(a.env or {}) == dict(b.env or {}) and a.cwd == b.cwd


class ParkingRunner:
    """A :class:`~talos_os.init.supervisor.model.Runner` whose first start of a parked service hands
    over the process launched by :meth:`park`; every other start goes to the inner runner."""

    def __init__(self, reaper: Reaper, note: Callable[[str], None] | None = None) -> None:
        self.reaper = reaper
        self.inner: Runner | None = None
        self.cgroups: CgroupTree | None = None
        self._note = note or log.info
        self._parked: dict[str, _Parked] = {}
        self._lock = threading.Lock()

    def park(self, spec: ServiceSpec) -> int:
        """Launch ``spec`` now, waiting on stdin for its start; its pid."""

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**(spec.env or {}), PARKED_ENV: "1"},
                cwd=spec.cwd,
                start_new_session=True,
                close_fds=True,
            )

        proc = self.reaper.spawn(popen)
        with self._lock:
            self._parked[spec.name] = _Parked(spec, proc)
        return proc.pid

    def bind(
        self, inner: Runner, cgroups: CgroupTree | None, note: Callable[[str], None] | None = None
    ) -> ParkingRunner:
        """The runner for every start that is not a hand-over, the cgroups parked processes join and
        where hand-overs are reported."""
        self.inner, self.cgroups = inner, cgroups
        self._note = note or self._note
        return self

    def parked(self) -> list[str]:
        """Names of the services whose parked process has not been handed over."""
        with self._lock:
            return sorted(self._parked)

    def prepare(self, spec: ServiceSpec) -> None:
        assert self.inner is not None, "ParkingRunner.bind() first"
        self.inner.prepare(spec)

    def start(self, spec: ServiceSpec) -> Handle:
        assert self.inner is not None, "ParkingRunner.bind() first"
        with self._lock:
            parked = self._parked.pop(spec.name, None)
        if parked is not None:
            handle = self._hand_over(parked, spec)
            if handle is not None:
                return handle
        return self.inner.start(spec)

    def close(self) -> None:
        """End-of-file to every parked process never handed over (they exit), and collect them."""
        with self._lock:
            left, self._parked = list(self._parked.values()), {}
        for parked in left:
            self._discard(parked, "not needed")

    def _hand_over(self, parked: _Parked, spec: ServiceSpec) -> Handle | None:
        name = spec.name
        if not same_command(parked.spec, spec):
            self._discard(parked, "its command changed")
            return None
        if self.cgroups is not None:
            fd = self.cgroups.open_procs(name)
            if fd is not None:
                try:
                    os.write(fd, str(parked.proc.pid).encode())
                except OSError as exc:  # it exited already: the write below says so too
                    log.debug("parked %s (pid %d) cannot join its cgroup: %s", name, parked.proc.pid, exc)
                finally:
                    os.close(fd)
        stdin = parked.proc.stdin
        assert stdin is not None
        try:
            stdin.write(GO)
            stdin.close()
        except OSError:  # EPIPE: it died while parked (its output says why)
            out = self._collect(parked)
            self._note(f"{name}: the parked process ended before its start ({out}); starting it anew")
            return None
        self._note(f"{name}: started the process parked at boot (pid {parked.proc.pid})")
        return ProcessHandle(parked.proc, self.reaper)

    def _discard(self, parked: _Parked, why: str) -> None:
        self._note(f"{parked.spec.name}: the parked process is not used ({why})")
        if parked.proc.stdin is not None:
            with contextlib.suppress(OSError):
                parked.proc.stdin.close()
        self._collect(parked, timeout=5.0)

    def _collect(self, parked: _Parked, timeout: float = 5.0) -> str:
        """Wait for a parked process to end (SIGKILL after ``timeout``); its last output line."""
        killer = threading.Timer(timeout, self.reaper.signal, (parked.proc, signal.SIGKILL))
        killer.start()
        try:
            code = self.reaper.wait(parked.proc)
        finally:
            killer.cancel()
        tail = ""
        if parked.proc.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                lines = parked.proc.stdout.read().decode("utf-8", "replace").strip().splitlines()
                tail = lines[-1] if lines else ""
            with contextlib.suppress(OSError):
                parked.proc.stdout.close()
        return f"exit status {code}" + (f": {tail}" if tail else "")
