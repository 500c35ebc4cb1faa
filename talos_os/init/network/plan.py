"""What the node wants of its links: pure planning from what netlink reports and the config says."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config model is heavy to import; the network comes up before the config
    from talos_os.config.model import MachineNetwork

DEFAULT_DHCP_TIMEOUT = 30.0
ARPHRD_ETHER = 1


@dataclass(frozen=True)
class Link:
    """A network link as netlink reports it."""

    index: int
    name: str
    mac: str | None = None
    kind: str | None = None  # IFLA_INFO_KIND: veth, bridge, vxlan...; None for a NIC driver
    loopback: bool = False
    carrier: bool = False
    mtu: int = 1500
    arp_type: int = ARPHRD_ETHER


def is_physical(link: Link) -> bool:
    """A NIC: Ethernet, not loopback, and no link kind (virtual links all have one)."""
    return not link.loopback and link.kind is None and link.arp_type == ARPHRD_ETHER


@dataclass(frozen=True)
class StaticRoute:
    network: str
    gateway: str | None = None
    metric: int | None = None


@dataclass(frozen=True)
class LinkPlan:
    """What one link gets: up always; DHCP or a static address; an MTU and routes if configured."""

    name: str
    dhcp: bool = False
    address: str | None = None  # address/prefix
    mtu: int | None = None
    routes: tuple[StaticRoute, ...] = ()


def plan_links(
    links: Sequence[Link], netcfg: MachineNetwork | None, candidate: Callable[[Link], bool] = is_physical
) -> tuple[list[LinkPlan], list[str]]:
    """Plans for the links to bring up, and the config's interface names that do not exist.

    Interfaces named in the config get exactly what it says. Other physical links get DHCP when
    the config names no interface at all (or there is no config yet), else are only brought up.
    """
    configured = {i.name: i for i in netcfg.interfaces} if netcfg is not None else {}
    plans = []
    for link in links:
        if link.loopback:
            continue
        iface = configured.get(link.name)
        if iface is not None:
            routes = tuple(
                StaticRoute(str(r.network), str(r.gateway) if r.gateway else None, r.metric)
                for r in iface.routes
            )
            plans.append(
                LinkPlan(
                    link.name,
                    dhcp=iface.cidr is None,
                    address=str(iface.cidr) if iface.cidr is not None else None,
                    mtu=iface.mtu,
                    routes=routes,
                )
            )
        elif candidate(link):
            plans.append(LinkPlan(link.name, dhcp=not configured))
    names = {link.name for link in links}
    return plans, [name for name in configured if name not in names]


def dhcp_timeout(netcfg: MachineNetwork | None) -> float:
    if netcfg is not None and netcfg.dhcp_timeout is not None:
        return netcfg.dhcp_timeout.total_seconds()
    return DEFAULT_DHCP_TIMEOUT
