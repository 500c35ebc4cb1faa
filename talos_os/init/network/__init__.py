"""The node's network: links up, DHCPv4 or static addresses, routes, resolv.conf, hosts and hostname.

:class:`NetworkManager` is called twice by the init. Before the machine config is known (it
often comes over the network) ``configure(None)`` runs DHCP on every physical link; once the
config is there ``configure(cfg.machine.network)`` applies it: static addresses, MTUs and routes
on the interfaces it names, DHCP where it asks for it (or when it names no interface at all),
and its nameservers, which override the ones DHCP gave.

DHCP is pyroute2's :class:`~pyroute2.dhcp.client.AsyncDHCPClient`, one per link, in an asyncio
loop on a daemon thread that lives as long as the init: the client renews and rebinds on its
own timers (a node stays up for months), our hooks put the lease's address, default route and
MTU on the link and rewrite resolv.conf. ``configure`` waits up to the DHCP timeout
(``machine.network.dhcpTimeout``, else 30 s) for a lease on every DHCP link that has carrier;
links still without a lease keep trying in the background.

The files live in ``/run/talos/etc`` (the image links /etc/resolv.conf, /etc/hosts and
/etc/hostname there); :func:`apply_hostname` writes hosts and hostname and sets the kernel's.
Rendering and planning are pure functions; the netlink and DHCP paths are tested for real in
a network namespace on the host.

The package: ``plan`` (what each link gets, pure), ``lease`` (DHCP leases), ``files`` (hostname,
hosts, resolv.conf), ``state`` (snapshots) and ``manager`` (the netlink and DHCP side).
"""

from talos_os.init.network.files import (
    FILES_DIR,
    MAX_NAMESERVERS,
    apply_hostname,
    choose_hostname,
    render_hosts,
    render_resolv_conf,
    valid_hostname,
)
from talos_os.init.network.lease import LeaseInfo, lease_class, lease_info
from talos_os.init.network.manager import NetworkManager
from talos_os.init.network.plan import (
    DEFAULT_DHCP_TIMEOUT,
    Link,
    LinkPlan,
    StaticRoute,
    dhcp_timeout,
    is_physical,
    plan_links,
)
from talos_os.init.network.state import LinkState, NetworkState

__all__ = [
    "DEFAULT_DHCP_TIMEOUT",
    "FILES_DIR",
    "MAX_NAMESERVERS",
    "LeaseInfo",
    "Link",
    "LinkPlan",
    "LinkState",
    "NetworkManager",
    "NetworkState",
    "StaticRoute",
    "apply_hostname",
    "choose_hostname",
    "dhcp_timeout",
    "is_physical",
    "lease_class",
    "lease_info",
    "plan_links",
    "render_hosts",
    "render_resolv_conf",
    "valid_hostname",
]
