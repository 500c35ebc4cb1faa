"""What osd reports about the node, read straight from /proc, /sys and netlink (pyroute2).

Plain functions returning plain dataclasses: the servicer turns them into protobuf messages, and
the tests call them against the host (the paths are parameters where a test needs its own files).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
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


# --- network -----------------------------------------------------------------------------------

_IFF = {
    0x1: "UP",
    0x2: "BROADCAST",
    0x8: "LOOPBACK",
    0x10: "POINTOPOINT",
    0x40: "RUNNING",
    0x80: "NOARP",
    0x100: "PROMISC",
    0x400: "MASTER",
    0x800: "SLAVE",
    0x1000: "MULTICAST",
    0x10000: "LOWER_UP",
}
_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 16: "dhcp", 42: "babel"}
_FAMILIES = {int(socket.AF_INET): "inet", int(socket.AF_INET6): "inet6"}
LOCAL_TABLE = 255


@dataclass(frozen=True)
class InterfaceInfo:
    index: int
    name: str
    mtu: int
    mac: str
    flags: list[str]
    state: str
    addresses: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RouteInfo:
    interface: str
    destination: str
    gateway: str
    source: str
    metric: int
    table: int
    family: str
    scope: str
    protocol: str


def _flag_names(flags: int) -> list[str]:
    return [name for bit, name in sorted(_IFF.items()) if flags & bit]


def preload_netlink() -> None:
    """Import pyroute2 now: osd lists the node's addresses as it starts, and the import is nine
    tenths of that start; a parked osd pays it before its go, off the boot's critical path."""
    import pyroute2  # noqa: F401


@contextlib.contextmanager
def _netlink() -> Iterator[object]:
    from pyroute2 import IPRoute  # imported here: netlink is only needed by these three calls

    with IPRoute() as ipr:
        yield ipr


def interfaces() -> list[InterfaceInfo]:
    """Links with flags, operational state and addresses (CIDR)."""
    with _netlink() as ipr:
        links = list(ipr.get_links())  # type: ignore[attr-defined]
        addrs = list(ipr.get_addr())  # type: ignore[attr-defined]
    by_index: dict[int, list[str]] = {}
    for a in addrs:
        address = a.get("address") or a.get("IFA_LOCAL")
        if address:
            by_index.setdefault(int(a["index"]), []).append(f"{address}/{a['prefixlen']}")
    result = []
    for link in links:
        index = int(link["index"])
        result.append(
            InterfaceInfo(
                index=index,
                name=str(link.get("ifname") or ""),
                mtu=int(link.get("mtu") or 0),
                mac=str(link.get("address") or ""),
                flags=_flag_names(int(link["flags"])),
                state=str(link.get("operstate") or "UNKNOWN").lower(),
                addresses=by_index.get(index, []),
            )
        )
    result.sort(key=lambda i: i.index)
    return result


def addresses(*, include_loopback: bool = True) -> list[str]:
    """The node's IP addresses (no link-local ones: a certificate cannot name them usefully)."""
    result = []
    for iface in interfaces():
        if "LOOPBACK" in iface.flags and not include_loopback:
            continue
        for cidr in iface.addresses:
            ip = ipaddress.ip_interface(cidr).ip
            if not ip.is_link_local and str(ip) not in result:
                result.append(str(ip))
    return result


def routes() -> list[RouteInfo]:
    """Routes of every table but the kernel's local one, IPv4 then IPv6."""
    with _netlink() as ipr:
        names = {int(link["index"]): str(link.get("ifname") or "") for link in ipr.get_links()}  # type: ignore[attr-defined]
        raw = list(ipr.get_routes(family=socket.AF_UNSPEC))  # type: ignore[attr-defined]
    result = []
    for r in raw:
        family = int(r["family"])
        if family not in _FAMILIES:
            continue
        table = int(r.get("table") or r["table"])
        if table == LOCAL_TABLE:
            continue
        default = "0.0.0.0" if family == socket.AF_INET else "::"
        result.append(
            RouteInfo(
                interface=names.get(int(r.get("oif") or 0), ""),
                destination=f"{r.get('dst') or default}/{r['dst_len']}",
                gateway=str(r.get("gateway") or ""),
                source=str(r.get("prefsrc") or ""),
                metric=int(r.get("priority") or 0),
                table=table,
                family=_FAMILIES[family],
                scope=_SCOPES.get(int(r["scope"]), str(r["scope"])),
                protocol=_PROTOCOLS.get(int(r["proto"]), str(r["proto"])),
            )
        )
    result.sort(key=lambda r: (r.family, r.table, r.metric, r.destination))
    return result
