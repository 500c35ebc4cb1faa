"""NetworkManager: links up, DHCPv4 clients, static addresses and routes, over netlink (pyroute2)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talos_os.init.network.files import FILES_DIR, MAX_NAMESERVERS, render_resolv_conf, write_atomic
from talos_os.init.network.lease import LeaseInfo, lease_class, lease_info
from talos_os.init.network.plan import (
    Link,
    LinkPlan,
    StaticRoute,
    dhcp_timeout,
    is_physical,
    plan_links,
)
from talos_os.init.network.state import LinkState, NetworkState
from talos_os.lib.netlink import (
    AsyncDHCPClient,
    AsyncIPRoute,
    ClientConfig,
    Hook,
    Lease,
    NetlinkError,
    Trigger,
    dhcp,
)

if TYPE_CHECKING:  # the config model is heavy to import; the network comes up before the config
    from talos_os.config.model import MachineNetwork

CARRIER_GRACE = 5.0  # how long a link may take to see carrier before we stop waiting for it
DHCP_ROUTE_METRIC = 1024  # + ifindex: one default route per DHCP link, the lowest index wins
RTPROT_STATIC = 4
RTPROT_DHCP = 16
IFF_LOOPBACK = 0x8
VENDOR_ID = "talos-os"
REQUESTED = (
    dhcp.Option.SUBNET_MASK,
    dhcp.Option.ROUTER,
    dhcp.Option.NAME_SERVER,
    dhcp.Option.DOMAIN_NAME,
    dhcp.Option.HOST_NAME,
    dhcp.Option.INTERFACE_MTU,
    dhcp.Option.BROADCAST_ADDRESS,
    dhcp.Option.LEASE_TIME,
    dhcp.Option.RENEWAL_TIME,
    dhcp.Option.REBINDING_TIME,
)

Log = Callable[[str], None]


# --- netlink --------------------------------------------------------------------------------------


def _link_from_msg(msg: Any) -> Link:
    info = msg.get("linkinfo")
    return Link(
        index=msg["index"],
        name=msg.get("ifname"),
        mac=msg.get("address"),
        kind=info.get("kind") if info is not None else None,
        loopback=bool(msg["flags"] & IFF_LOOPBACK),
        carrier=bool(msg.get("carrier")),
        mtu=msg.get("mtu") or 1500,
        arp_type=msg["ifi_type"],
    )


async def _links(ipr: Any) -> list[Link]:
    return [_link_from_msg(m) async for m in await ipr.link("dump")]


def _split(cidr: str) -> tuple[str, int]:
    iface = ipaddress.ip_interface(cidr)
    return str(iface.ip), iface.network.prefixlen


async def _quietly(what: str, log: Log, coro: Any, ignore: tuple[int, ...] = ()) -> bool:
    """Await a netlink request; log a failure instead of raising (one bad route must not stop boot)."""
    try:
        await coro
        return True
    except NetlinkError as exc:
        if exc.code not in ignore:
            log(f"network: {what} failed: {os.strerror(exc.code) if exc.code else exc}")
        return False


@dataclass
class _DhcpLink:
    config: ClientConfig
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass
class _Managed:
    plan: LinkPlan
    applied_address: str | None = None
    applied_routes: tuple[StaticRoute, ...] = ()
    lease: LeaseInfo | None = None
    renewals: int = 0


class NetworkManager:
    """Owns the node's links: call :meth:`configure` before and after the config arrives.

    ``iproute`` makes a pyroute2 ``AsyncIPRoute`` (one per batch of requests); ``candidate``
    decides which unnamed links are NICs; ``lease_dir`` keeps leases across restarts (a
    directory on /var lets the next boot ask for the same address); ``on_change`` is called
    (from the network thread) with a fresh state whenever a lease comes, changes or goes.
    """

    def __init__(
        self,
        log: Log,
        *,
        files_dir: Path | str = FILES_DIR,
        lease_dir: Path | None = None,
        candidate: Callable[[Link], bool] = is_physical,
        iproute: Callable[[], Any] = AsyncIPRoute,
        on_change: Callable[[NetworkState], None] | None = None,
    ) -> None:
        self._log = log
        self.files_dir = Path(files_dir)
        self._lease_type = lease_class(lease_dir)
        self._candidate = candidate
        self._iproute = iproute
        self._on_change = on_change
        self._lock = threading.Lock()
        self._links: dict[str, Link] = {}
        self._managed: dict[str, _Managed] = {}
        self._dhcp: dict[str, _DhcpLink] = {}
        self._nameservers: tuple[str, ...] = ()
        self._hostname: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="network", daemon=True)
        self._thread.start()

    # --- the API for the init (any thread) -----------------------------------------------------

    def configure(
        self, netcfg: MachineNetwork | None = None, *, timeout: float | None = None
    ) -> NetworkState:
        """Apply ``netcfg`` (None: DHCP on every NIC) and wait for DHCP leases up to ``timeout``."""
        wait = timeout if timeout is not None else dhcp_timeout(netcfg)
        future = asyncio.run_coroutine_threadsafe(self._configure(netcfg, wait), self._loop)
        return future.result()

    def state(self) -> NetworkState:
        with self._lock:
            return self._snapshot()

    def wait_for(self, predicate: Callable[[NetworkState], bool], timeout: float) -> NetworkState | None:
        """Block until ``predicate(state)`` holds (e.g. a renewal happened); None on timeout."""

        async def poll() -> NetworkState | None:
            deadline = self._loop.time() + timeout
            while self._loop.time() < deadline:
                current = self.state()
                if predicate(current):
                    return current
                await asyncio.sleep(0.1)
            return None

        return asyncio.run_coroutine_threadsafe(poll(), self._loop).result()

    def stop(self, release: bool = True) -> None:
        """Stop every DHCP client (sending DHCPRELEASE if ``release``) and the network thread."""

        async def stop_all() -> None:
            for name in list(self._dhcp):
                await self._stop_dhcp(name, release)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop_all(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    # --- the network thread --------------------------------------------------------------------

    async def _configure(self, netcfg: MachineNetwork | None, timeout: float) -> NetworkState:
        self._hostname = netcfg.hostname if netcfg is not None else None
        async with self._iproute() as ipr:
            for index in await ipr.link_lookup(ifname="lo"):
                await _quietly("bringing lo up", self._log, ipr.link("set", index=index, state="up"))
            links = await _links(ipr)
            with self._lock:
                self._links = {link.name: link for link in links}
            plans, missing = plan_links(links, netcfg, self._candidate)
            if missing:
                present = ", ".join(link.name for link in links) or "none"
                self._log(
                    f"network: interfaces {', '.join(missing)} from the config do not exist (links: {present})"
                )
            for plan in plans:
                await self._apply_plan(ipr, self._links[plan.name], plan)
        for name in [n for n in self._dhcp if n not in {p.name for p in plans if p.dhcp}]:
            await self._stop_dhcp(name, release=True)
            self._log(f"network: {name} no longer uses DHCP")
        for plan in plans:
            if plan.dhcp and plan.name not in self._dhcp:
                self._start_dhcp(plan.name)
        self._nameservers = tuple(str(ns) for ns in netcfg.nameservers) if netcfg is not None else ()
        await self._wait_for_leases([p.name for p in plans if p.dhcp], timeout)
        self._write_resolv()
        with self._lock:
            return self._snapshot()

    async def _apply_plan(self, ipr: Any, link: Link, plan: LinkPlan) -> None:
        log = self._log
        with self._lock:
            managed = self._managed.setdefault(link.name, _Managed(plan))
            managed.plan = plan
        await _quietly(f"bringing {link.name} up", log, ipr.link("set", index=link.index, state="up"))
        if plan.mtu is not None and plan.mtu != link.mtu:
            await _quietly(
                f"MTU {plan.mtu} on {link.name}", log, ipr.link("set", index=link.index, mtu=plan.mtu)
            )
        if plan.dhcp:
            if managed.applied_address is not None:
                await self._del_address(ipr, link, managed.applied_address)
                managed.applied_address = None
            # Routes through the DHCP subnet can only go on once the lease is there (see _on_lease).
            await self._apply_routes(ipr, link, managed, plan.routes if managed.lease is not None else ())
            return
        if link.name in self._dhcp:
            await self._stop_dhcp(link.name, release=True)
        if managed.applied_address not in (None, plan.address):
            await self._del_address(ipr, link, managed.applied_address or "")
        if plan.address is not None:
            address, prefix = _split(plan.address)
            ok = await _quietly(
                f"address {plan.address} on {link.name}",
                log,
                ipr.addr("replace", index=link.index, address=address, prefixlen=prefix),
            )
            if ok:
                managed.applied_address = plan.address
                log(f"network: {link.name} has static address {plan.address}")
        await self._apply_routes(ipr, link, managed, plan.routes)

    async def _apply_routes(
        self, ipr: Any, link: Link, managed: _Managed, routes: tuple[StaticRoute, ...]
    ) -> None:
        for old in managed.applied_routes:
            if old not in routes:
                await _quietly(
                    f"removing route {old.network}",
                    self._log,
                    ipr.route("del", **_route_spec(link, old)),
                    (errno.ESRCH,),
                )
        applied = []
        for route in routes:
            spec = _route_spec(link, route)
            if await _quietly(
                f"route {route.network} on {link.name}", self._log, ipr.route("replace", **spec)
            ):
                applied.append(route)
        managed.applied_routes = tuple(applied)

    async def _del_address(self, ipr: Any, link: Link, cidr: str) -> None:
        address, prefix = _split(cidr)
        await _quietly(
            f"removing {cidr} from {link.name}",
            self._log,
            ipr.addr("del", index=link.index, address=address, prefixlen=prefix),
            (errno.EADDRNOTAVAIL, errno.ENODEV),
        )

    def _start_dhcp(self, name: str) -> None:
        config = ClientConfig(
            interface=name,
            lease_type=self._lease_type,
            hooks=self._hooks(name),
            requested_parameters=REQUESTED,
            handle_signals=False,  # signals belong to PID 1, and this is not the main thread
            host_name=self._hostname,
            vendor_id=VENDOR_ID,
            release=True,
            hook_timeout=10.0,
        )
        stop = asyncio.Event()
        task = self._loop.create_task(self._run_dhcp(name, config, stop), name=f"dhcp-{name}")
        self._dhcp[name] = _DhcpLink(config, stop, task)
        self._log(f"network: DHCP on {name}")

    async def _run_dhcp(self, name: str, config: ClientConfig, stop: asyncio.Event) -> None:
        """Keep a client running until stopped; restart it (backing off) if it fails or its I/O ends.

        pyroute2's client ends its send/receive tasks when the link goes administratively down
        (ENETDOWN) and never restarts them: we notice and start a fresh client.
        """
        delay = 1.0
        while not stop.is_set():
            try:
                async with AsyncDHCPClient(config) as client:
                    await client.bootstrap()
                    stopped = asyncio.ensure_future(stop.wait())
                    io = [t for t in (client._sender_task, client._receiver_task) if t is not None]
                    await asyncio.wait([stopped, *io], return_when=asyncio.FIRST_COMPLETED)
                    stopped.cancel()
                if stop.is_set():
                    return
                self._log(f"network: DHCP client on {name} stopped (link down?); restarting in {delay:.0f} s")
            except Exception as exc:
                self._log(f"network: DHCP client on {name} failed ({exc!r}); restarting in {delay:.0f} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 60.0)

    async def _stop_dhcp(self, name: str, release: bool) -> None:
        entry = self._dhcp.pop(name, None)
        if entry is None:
            return
        entry.config.release = release  # read by the client when it exits
        entry.stop.set()
        await entry.task

    def _hooks(self, name: str) -> list[Hook]:
        async def bound(lease: Lease) -> None:
            await self._guard(self._on_lease(name, lease, renewed=False))

        async def renewed(lease: Lease) -> None:
            await self._guard(self._on_lease(name, lease, renewed=True))

        async def unbound(lease: Lease) -> None:
            await self._guard(self._on_unbound(name, lease))

        return [
            Hook(bound, {Trigger.BOUND}),
            Hook(renewed, {Trigger.RENEWED, Trigger.REBOUND}),
            Hook(unbound, {Trigger.UNBOUND, Trigger.EXPIRED}),
        ]

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except Exception as exc:  # pyroute2 would only log it to the logging module
            self._log(f"network: applying a DHCP lease failed: {exc!r}")

    async def _on_lease(self, name: str, lease: Lease, renewed: bool) -> None:
        info = lease_info(lease.ack)
        with self._lock:
            managed = self._managed.setdefault(name, _Managed(LinkPlan(name, dhcp=True)))
            old = managed.lease
        async with self._iproute() as ipr:
            link = next((lk for lk in await _links(ipr) if lk.name == name), None)
            if link is None:
                return
            if old is not None and old.address != info.address:
                await self._del_address(ipr, link, old.address)
            address, prefix = _split(info.address)
            await ipr.addr(
                "replace", index=link.index, address=address, prefixlen=prefix, broadcast=info.broadcast
            )
            if info.mtu and managed.plan.mtu is None and info.mtu != link.mtu:
                await _quietly(
                    f"MTU {info.mtu} on {name}", self._log, ipr.link("set", index=link.index, mtu=info.mtu)
                )
            if info.gateway:
                await self._default_route(ipr, link, info)
            await self._apply_routes(ipr, link, managed, managed.plan.routes)
        with self._lock:
            managed.lease = info
            managed.renewals += 1 if renewed else 0
            state = self._snapshot()
        if not renewed or old != info:
            self._log(
                f"network: {name} got {info.address} from DHCP server {info.server}"
                f" (gateway {info.gateway or 'none'}, lease {info.lease_time} s)"
            )
        self._write_resolv()
        if self._on_change is not None:
            self._on_change(state)

    async def _default_route(self, ipr: Any, link: Link, info: LeaseInfo) -> None:
        gateway = ipaddress.ip_address(info.gateway or "")
        if gateway not in ipaddress.ip_interface(info.address).network:
            # A /32 lease with an off-subnet router (GCE-style): reach the router on the link first.
            await _quietly(
                f"route to gateway {gateway}",
                self._log,
                ipr.route("replace", dst=f"{gateway}/32", oif=link.index, scope=253, proto=RTPROT_DHCP),
            )
        await _quietly(
            f"default route via {gateway} on {link.name}",
            self._log,
            ipr.route(
                "replace",
                dst="0.0.0.0/0",
                gateway=str(gateway),
                oif=link.index,
                priority=DHCP_ROUTE_METRIC + link.index,
                proto=RTPROT_DHCP,
            ),
        )

    async def _on_unbound(self, name: str, lease: Lease) -> None:
        with self._lock:
            managed = self._managed.get(name)
            info = managed.lease if managed is not None else None
        if managed is None or info is None:
            return
        async with self._iproute() as ipr:
            link = next((lk for lk in await _links(ipr) if lk.name == name), None)
            if link is not None:
                if info.gateway:
                    await _quietly(
                        "removing the DHCP default route",
                        self._log,
                        ipr.route(
                            "del", dst="0.0.0.0/0", oif=link.index, priority=DHCP_ROUTE_METRIC + link.index
                        ),
                        (errno.ESRCH,),
                    )
                await self._del_address(ipr, link, info.address)
        with self._lock:
            managed.lease = None
            state = self._snapshot()
        self._log(f"network: {name} released {info.address}")
        self._write_resolv()
        if self._on_change is not None:
            self._on_change(state)

    async def _wait_for_leases(self, names: list[str], timeout: float) -> None:
        """Until every DHCP link with carrier has a lease, or ``timeout`` (links without carrier don't count)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            with self._lock:
                pending = [n for n in names if n in self._managed and self._managed[n].lease is None]
            if not pending:
                return
            elapsed = loop.time() - start
            if elapsed >= timeout:
                self._log(
                    f"network: no DHCP lease on {', '.join(pending)} after {timeout:.0f} s; still trying"
                )
                return
            if elapsed >= min(CARRIER_GRACE, timeout):
                async with self._iproute() as ipr:
                    carriers = {lk.name: lk.carrier for lk in await _links(ipr)}
                if not any(carriers.get(n) for n in pending):
                    self._log(f"network: no carrier on {', '.join(pending)}; DHCP goes on in the background")
                    return
            await asyncio.sleep(0.2)

    def _resolvers(self) -> tuple[list[str], list[str]]:
        leases = [m.lease for m in self._managed.values() if m.lease is not None]
        nameservers = list(self._nameservers) or [ns for lease in leases for ns in lease.nameservers]
        search = [lease.domain for lease in leases if lease.domain]
        return nameservers, search

    def _write_resolv(self) -> None:
        with self._lock:
            nameservers, search = self._resolvers()
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.files_dir / "resolv.conf", render_resolv_conf(nameservers, search))
        except OSError as exc:
            self._log(f"network: cannot write {self.files_dir / 'resolv.conf'}: {exc}")

    def _snapshot(self) -> NetworkState:
        """Build the state; the caller holds ``self._lock``."""
        links = []
        for name, managed in self._managed.items():
            link = self._links.get(name)
            plan = managed.plan
            addresses = [a for a in (managed.applied_address,) if a] + (
                [managed.lease.address] if managed.lease else []
            )
            method = "dhcp" if plan.dhcp else ("static" if plan.address else "up")
            links.append(
                LinkState(
                    name=name,
                    index=link.index if link else 0,
                    mac=link.mac if link else None,
                    method=method,
                    carrier=link.carrier if link else False,
                    addresses=tuple(addresses),
                    lease=managed.lease,
                    renewals=managed.renewals,
                )
            )
        nameservers, search = self._resolvers()
        return NetworkState(tuple(links), tuple(nameservers[:MAX_NAMESERVERS]), tuple(search))


def _route_spec(link: Link, route: StaticRoute) -> dict[str, Any]:
    spec: dict[str, Any] = {"dst": route.network, "oif": link.index, "proto": RTPROT_STATIC}
    if route.gateway:
        spec["gateway"] = route.gateway
    else:
        spec["scope"] = 253  # RT_SCOPE_LINK: the network is on the link
    if route.metric is not None:
        spec["priority"] = route.metric
    return spec
