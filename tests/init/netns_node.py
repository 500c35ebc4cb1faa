"""The node side of the network tests: runs inside a throwaway network namespace (ip netns exec).

Usage: netns_node.py SCENARIO FILES_DIR. Prints one JSON line per phase on stdout (what the
kernel and the files say), logs on stderr. Never touches the host's network: the namespace
holds only lo and the veth end called eth0.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from talos_os.config.model import MachineNetwork
from talos_os.init import network
from talos_os.lib.netlink import AsyncIPRoute


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def kernel_view() -> dict[str, Any]:
    async with AsyncIPRoute() as ipr:
        links = {m.get("ifname"): m async for m in await ipr.link("dump")}
        eth0 = links["eth0"]["index"]
        addrs = [
            f"{m.get('address')}/{m['prefixlen']}"
            async for m in await ipr.addr("dump", index=eth0)
            if m["family"] == 2  # IPv4
        ]
        routes = [
            {
                "dst": f"{m.get('dst') or '0.0.0.0'}/{m['dst_len']}",
                "gateway": m.get("gateway"),
                "priority": m.get("priority"),
                "proto": m["proto"],
            }
            async for m in await ipr.route("dump", table=254, family=2)
        ]
    return {
        "lo_up": bool(links["lo"]["flags"] & 1),
        "eth0_up": bool(links["eth0"]["flags"] & 1),
        "mtu": links["eth0"].get("mtu"),
        "index": eth0,
        "addresses": addrs,
        "routes": routes,
    }


async def set_link(name: str, state: str) -> None:
    async with AsyncIPRoute() as ipr:
        index = (await ipr.link_lookup(ifname=name))[0]
        await ipr.link("set", index=index, state=state)


def phase(name: str, state: network.NetworkState, files: Path, **extra: Any) -> None:
    resolv = files / "resolv.conf"
    out = {
        "phase": name,
        "state": {
            "addresses": state.addresses,
            "gateways": state.gateways,
            "nameservers": list(state.nameservers),
            "search": list(state.search),
            "dhcp_hostname": state.dhcp_hostname,
            "methods": {link.name: link.method for link in state.links},
            "renewals": sum(link.renewals for link in state.links),
        },
        "kernel": asyncio.run(kernel_view()),
        "resolv": resolv.read_text() if resolv.exists() else None,
        **extra,
    }
    print(json.dumps(out), flush=True)


def veth_too(link: network.Link) -> bool:
    """The namespace's only NIC is a veth: accept it like a physical link."""
    return not link.loopback


def dhcp_then_static(files: Path) -> None:
    manager = network.NetworkManager(log, files_dir=files, candidate=veth_too)
    state = manager.configure(None, timeout=30)
    name, source = network.choose_hostname(None, None, state.dhcp_hostname, state.mac)
    calls: list[str] = []
    network.apply_hostname(name, files, calls.append, address=state.primary_address)
    phase(
        "dhcp", state, files, hostname=[name, source], sethostname=calls, hosts=(files / "hosts").read_text()
    )

    renewed = manager.wait_for(lambda s: sum(link.renewals for link in s.links) >= 1, timeout=60)
    phase("renewed", renewed or manager.state(), files)

    static = MachineNetwork.model_validate(
        {
            "hostname": "node-static",
            "nameservers": ["10.99.0.9"],
            "interfaces": [
                {
                    "name": "eth0",
                    "cidr": "10.99.0.200/24",
                    "mtu": 1280,
                    "routes": [
                        {"network": "10.98.0.0/16", "gateway": "10.99.0.1"},
                        {"network": "0.0.0.0/0", "gateway": "10.99.0.1", "metric": 50},
                    ],
                }
            ],
        }
    )
    phase("static", manager.configure(static), files)

    back = MachineNetwork.model_validate(
        {"interfaces": [{"name": "eth0", "dhcp": True}], "dhcpTimeout": "30s"}
    )
    phase("dhcp-again", manager.configure(back), files)

    # Someone sets the link down and up again: the client's I/O ends; a fresh client gets a lease.
    before = manager.state().link("eth0")
    asyncio.run(set_link("eth0", "down"))
    gone = manager.wait_for(lambda s: not s.addresses, timeout=60)
    asyncio.run(set_link("eth0", "up"))
    back_up = manager.wait_for(lambda s: bool(s.addresses), timeout=120)
    phase("flapped", back_up or manager.state(), files, released=gone is not None, had=before is not None)
    manager.stop()
    phase("stopped", network.NetworkState(), files)  # the kernel view: the lease was released


def late_server(files: Path) -> None:
    """No carrier and no server at first: configure returns, DHCP keeps going in the background."""
    manager = network.NetworkManager(log, files_dir=files, candidate=veth_too)
    state = manager.configure(None, timeout=30)
    phase("no-server", state, files)
    later = manager.wait_for(lambda s: bool(s.addresses), timeout=90)
    phase("late-lease", later or manager.state(), files)
    manager.stop(release=False)


if __name__ == "__main__":
    scenario, files_dir = sys.argv[1], Path(sys.argv[2])
    {"dhcp-then-static": dhcp_then_static, "late-server": late_server}[scenario](files_dir)
