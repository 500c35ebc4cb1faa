"""What osd reports about the node, read straight from /proc and /sys.

Links, addresses and routes are not here: the init owns the network and answers them over its
control socket (:mod:`talos_os.lib.netinfo` reads them there), so osd never loads netlink.

Plain functions returning plain dataclasses: the servicer turns them into protobuf messages, and
the tests call them against the host (the paths are parameters where a test needs its own files).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from talos_os.lib.cgroups import unescape

PROC = Path("/proc")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "disk-sleep",
    "T": "stopped",
    "t": "tracing-stop",
    "Z": "zombie",
    "X": "dead",
    "I": "idle",
    "P": "parked",
}
SERVICE_NAMESPACE = "system"


# --- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessInfo:
    namespace: str
    id: str
    image: str
    pid: int
    ppid: int
    status: str
    command: str
    cpu_seconds: float
    rss_bytes: int
    threads: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _service_of_cgroup(text: str, cgroup_prefix: str) -> str | None:
    """The service whose group a /proc/PID/cgroup names (``0::/talos/osd`` -> ``osd``)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            if cgroup_prefix and path.startswith(cgroup_prefix + "/"):
                return path[len(cgroup_prefix) + 1 :].split("/", 1)[0] or None
    return None


def processes(
    *,
    service_pids: Mapping[int, str] | None = None,
    cgroup_prefix: str = "/talos",
    proc: Path = PROC,
) -> list[ProcessInfo]:
    """Every process, with the service it belongs to (its cgroup, or its pid as the init reports it).

    Namespaces: ``system`` for services, ``kernel`` for kernel threads, ``host`` for the rest.
    Processes that exit while being read are skipped.
    """
    service_pids = service_pids or {}
    result = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat")
        if stat is None:
            continue
        pid = int(entry.name)
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        try:
            state, ppid = fields[0], int(fields[1])
            flags = int(fields[6])
            ticks = int(fields[11]) + int(fields[12])
            threads = int(fields[17])
            rss_pages = int(fields[21])
        except (IndexError, ValueError):
            continue
        kernel_thread = bool(flags & 0x00200000)  # PF_KTHREAD
        cmdline = (_read(entry / "cmdline") or "").replace("\0", " ").strip()
        image = ""
        with contextlib.suppress(OSError):
            image = os.readlink(entry / "exe")
        service = service_pids.get(pid) or _service_of_cgroup(_read(entry / "cgroup") or "", cgroup_prefix)
        if service:
            namespace, ident = SERVICE_NAMESPACE, service
        elif kernel_thread:
            namespace, ident = "kernel", comm
        else:
            namespace, ident = "host", comm
        result.append(
            ProcessInfo(
                namespace=namespace,
                id=ident,
                image=image,
                pid=pid,
                ppid=ppid,
                status=_STATES.get(state, state),
                command=cmdline or f"[{comm}]",
                cpu_seconds=ticks / _CLK_TCK,
                rss_bytes=rss_pages * _PAGE,
                threads=threads,
            )
        )
    result.sort(key=lambda p: p.pid)
    return result


# --- memory ------------------------------------------------------------------------------------


def meminfo(path: Path = PROC / "meminfo") -> dict[str, int]:
    """/proc/meminfo in bytes (lines without a ``kB`` unit, such as HugePages counts, stay as they are)."""
    result = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        value = int(parts[0])
        result[key.strip()] = value * 1024 if parts[1:] == ["kB"] else value
    return result


# --- mounts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    source: str
    target: str
    fstype: str
    options: str
    size: int = 0
    used: int = 0
    available: int = 0


def mounts(mountinfo: Path = PROC / "self" / "mountinfo") -> list[MountInfo]:
    """Mounted file systems (from mountinfo) with their usage (statvfs; zero where it fails)."""
    result = []
    for line in mountinfo.read_text().splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, extra = left.split(" "), right.split(" ")
        if len(fields) < 6 or len(extra) < 2:
            continue
        target = unescape(fields[4])
        size = used = available = 0
        try:
            st = os.statvfs(target)
            size = st.f_blocks * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            available = st.f_bavail * st.f_frsize
        except OSError:
            pass
        result.append(MountInfo(unescape(extra[1]), target, extra[0], fields[5], size, used, available))
    return result
