"""Runs a service as a plain subprocess (the :class:`~talos_os.init.supervisor.model.Runner` in use today).

Kept apart from the supervisor so another runner (containerd) can take its place without the
supervisor knowing how a process is started, signalled or put into its cgroup.
"""

from __future__ import annotations

import os
import subprocess
from typing import IO

from talos_os.init.supervisor.model import Handle, ServiceSpec
from talos_os.init.supervisor.reaper import Reaper, WaitReaper
from talos_os.lib.cgroups import CgroupTree, join_and_exec


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
