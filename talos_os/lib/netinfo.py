"""The node's links, addresses and routes, read over netlink (pyroute2).

Read by the init, which owns the network and answers osd's ``interfaces`` and ``routes`` over its
control socket (so osd never loads pyroute2: about 9 MiB of its resident memory on a node), and by
trustd, whose certificates name the node's addresses. pyroute2 is
imported only when a function runs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

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


@contextlib.contextmanager
def _netlink() -> Iterator[object]:
    from talos_os.lib.netlink import IPRoute  # imported here: trustd and the init need it, osd never

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
