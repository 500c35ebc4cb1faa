"""One cgroup v2 group per supervised service, so osd can report each service's CPU and memory.

The tree is ``<root>/<service>`` (on the node ``/sys/fs/cgroup/talos/<service>``). A child joins its
group before the service's program runs: the runner opens the group's ``cgroup.procs`` and starts
the service through :func:`join_and_exec`, a few lines of Python that write ``0`` (itself) to it and
then exec the program, so a daemon that forks at once cannot leave a child behind in the parent's
group. (Running Python between fork and exec instead, ``preexec_fn``, crashes children of a
threaded parent now and then; moving the child from outside after the start races with it.)
Everything here degrades instead of failing: a service whose group cannot be made still runs, and
its figures then come from ``/proc`` (main process only).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/sys/fs/cgroup/talos")
# Controllers worth enabling for the services' groups; the kernel may offer fewer.
CONTROLLERS = ("cpu", "memory", "pids", "io")
_JOIN_AND_EXEC = (
    "import os,sys\nfd=int(sys.argv[1])\nos.write(fd,b'0')\nos.close(fd)\nos.execvp(sys.argv[2],sys.argv[2:])"
)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    """CPU time and memory of one service (``source`` says whether the cgroup or /proc measured it)."""

    cpu_usec: int
    memory_bytes: int
    source: str


def cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid hosts)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(unescape(left.split(" ")[4]))
    return None


def unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` is a space)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class CgroupTree:
    """The services' groups under ``root``; thread-safe (each call touches the file system only)."""

    def __init__(self, root: Path | str = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self._warned: set[str] = set()

    def group(self, name: str) -> Path:
        return self.root / name

    def setup(self) -> bool:
        """Create the root and delegate the available controllers to it; False if it cannot be made."""
        try:
            self.root.mkdir(exist_ok=True)
        except OSError as exc:
            self._warn("root", f"cgroup root {self.root} cannot be created ({exc}): services run without one")
            return False
        # The root's parent must delegate controllers to the root, and the root to the services.
        for where in (self.root.parent, self.root):
            self._enable(where)
        return True

    def _enable(self, where: Path) -> None:
        try:
            available = (where / "cgroup.controllers").read_text().split()
        except OSError:
            return
        for controller in CONTROLLERS:
            if controller in available:
                # A group with processes of its own cannot delegate (EBUSY): figures then come from /proc.
                with contextlib.suppress(OSError):
                    (where / "cgroup.subtree_control").write_text(f"+{controller}")

    def open_procs(self, name: str) -> int | None:
        """An open (close-on-exec) ``cgroup.procs`` of ``name``'s group, made if needed.

        The caller passes it to :func:`join_and_exec` and closes it after the spawn. None when the
        group cannot be made (logged once per service).
        """
        group = self.group(name)
        try:
            if not self.root.is_dir():
                self.setup()
            group.mkdir(exist_ok=True)
            return os.open(group / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._warn(name, f"service {name} runs outside a cgroup: {group}: {exc}")
            return None

    def pids(self, name: str) -> list[int]:
        """The processes now in ``name``'s group (empty if it has none or does not exist)."""
        try:
            return [int(p) for p in (self.group(name) / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def usage(self, name: str) -> Usage | None:
        """CPU (``cpu.stat`` usage_usec) and memory (``memory.current``, else the members' RSS)."""
        group = self.group(name)
        try:
            stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines() if " " in line)
        except OSError:
            return None
        cpu = int(stat.get("usage_usec", 0))
        try:
            memory = int((group / "memory.current").read_text())
        except (OSError, ValueError):
            # No memory controller delegated here (a hybrid host): add up the members' resident sets.
            memory = sum(rss_bytes(pid) for pid in self.pids(name))
        return Usage(cpu, memory, "cgroup")

    def remove(self, name: str) -> bool:
        """Remove ``name``'s group once it is empty; False while processes remain in it."""
        try:
            self.group(name).rmdir()
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError as exc:  # EBUSY while processes remain; never raise into the supervisor
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                log.debug("cannot remove cgroup %s: %s", self.group(name), exc)
            return False
        return True

    def remove_all(self) -> list[str]:
        """Remove every empty service group and then the root; the names of groups still busy."""
        busy = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for child in self.root.iterdir():
                if child.is_dir() and not self.remove(child.name):
                    busy.append(child.name)
        if not busy:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                self.root.rmdir()
        return busy

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def join_and_exec(fd: int, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` behind a Python one-liner that joins the group open at ``fd`` and execs ``argv[0]``.

    Pass ``fd`` to the child (``pass_fds``). The program is looked up here first (in ``env``'s
    PATH), so a missing one fails the start like a direct spawn would, not in the child.
    """
    program = argv[0]
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(program, path=path) if "/" not in program else program
    if found is None or not os.access(found, os.X_OK):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return [sys.executable, "-I", "-S", "-c", _JOIN_AND_EXEC, str(fd), *argv]


def rss_bytes(pid: int, proc: Path = Path("/proc")) -> int:
    """Resident memory of one process (0 if it is gone)."""
    try:
        return int((proc / str(pid) / "statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def proc_usage(pid: int, proc: Path = Path("/proc")) -> Usage | None:
    """CPU and memory of a single process from /proc (for a service without a cgroup)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
    except (IndexError, ValueError):
        return None
    return Usage(ticks * 1_000_000 // _CLK_TCK, rss_bytes(pid, proc), "proc")
