"""The service supervisor of the init (PID 1), in parts by concern.

- :mod:`.model`: what a service is (spec, states, events, snapshots) and the runner protocols;
- :mod:`.logbuffer`: a service's output, in memory and in a rotated file;
- :mod:`.reaper`: who calls ``waitpid`` (PID 1 reaps orphans too) and :func:`run` for tools;
- :mod:`.process`: the runner that starts a service as a plain subprocess;
- :mod:`.parking`: the runner that hands over a service launched at the start of the boot;
- :mod:`.restart`: the pure decision of what follows a run (finish, fail, give up, back off);
- :mod:`.core`: the :class:`Supervisor` itself.

Everything public is re-exported here, so ``from talos_os.init.supervisor import ...`` is the
one import the rest of the tree needs.
"""

from talos_os.init.supervisor.core import DEFAULT_LOG_DIR, MAX_LINE, Supervisor
from talos_os.init.supervisor.logbuffer import LogBuffer
from talos_os.init.supervisor.model import (
    TERMINAL,
    Condition,
    Handle,
    Restart,
    Runner,
    ServiceEvent,
    ServiceInfo,
    ServiceSpec,
    State,
    file_exists,
)
from talos_os.init.supervisor.process import ProcessHandle, ProcessRunner
from talos_os.init.supervisor.reaper import (
    PR_SET_CHILD_SUBREAPER,
    ChildReaper,
    Reaper,
    WaitReaper,
    run,
    set_child_subreaper,
)
from talos_os.init.supervisor.restart import RestartDecision, Verdict, decide_restart

__all__ = [
    "DEFAULT_LOG_DIR",
    "MAX_LINE",
    "PR_SET_CHILD_SUBREAPER",
    "TERMINAL",
    "ChildReaper",
    "Condition",
    "Handle",
    "LogBuffer",
    "ProcessHandle",
    "ProcessRunner",
    "Reaper",
    "Restart",
    "RestartDecision",
    "Runner",
    "ServiceEvent",
    "ServiceInfo",
    "ServiceSpec",
    "State",
    "Supervisor",
    "Verdict",
    "WaitReaper",
    "decide_restart",
    "file_exists",
    "run",
    "set_child_subreaper",
]
