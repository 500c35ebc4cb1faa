"""The real netlink + DHCP path, in two throwaway network namespaces joined by a veth pair.

The server namespace runs dnsmasq (DHCP only, no DNS); the node namespace runs
``netns_node.py`` with the real NetworkManager and pyroute2's DHCP client. Nothing is created
in the host's namespace and the namespaces are deleted even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

HERE = Path(__file__).resolve().parent
MAC = "02:00:00:00:00:07"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("dnsmasq") is None or shutil.which("ip") is None,
    reason="needs root, iproute2 and dnsmasq (deps/apt-packages.txt: dnsmasq-base)",
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Namespaces:
    server: str
    node: str
    server_if: str
    tmp: Path
    dnsmasq: subprocess.Popen[bytes] | None = None
    logs: list[IO[bytes]] = field(default_factory=list)

    def start_dhcp_server(self) -> None:
        """dnsmasq: a fixed address and hostname for our MAC, short renewal times (T1 4 s, T2 7 s)."""
        log = open(self.tmp / "dnsmasq.log", "wb")  # noqa: SIM115 - closed by the fixture
        self.logs.append(log)
        self.dnsmasq = subprocess.Popen(
            [
                "ip", "netns", "exec", self.server, "dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground",
                "--port=0", f"--interface={self.server_if}", "--bind-interfaces", "--user=root", "--group=root",
                "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,2m",
                f"--dhcp-host={MAC},10.99.0.57,node-7",
                "--dhcp-option=option:router,10.99.0.1", "--dhcp-option=option:dns-server,10.99.0.53",
                "--dhcp-option=option:domain-name,example.test", "--dhcp-option=option:mtu,1400",
                "--dhcp-option=option:T1,4", "--dhcp-option=option:T2,7",
                f"--dhcp-leasefile={self.tmp / 'leases'}", f"--pid-file={self.tmp / 'dnsmasq.pid'}", "--log-dhcp", "--log-facility=-",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def carrier(self, on: bool) -> None:
        ip("-n", self.server, "link", "set", self.server_if, "up" if on else "down")

    def run_node(self, scenario: str) -> subprocess.Popen[str]:
        files = self.tmp / "etc"
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.node,
                sys.executable,
                str(HERE / "netns_node.py"),
                scenario,
                str(files),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Namespaces]:
    tag = str(os.getpid())
    ns = Namespaces(
        server=f"talos-srv-{tag}", node=f"talos-node-{tag}", server_if=f"tsv{tag}"[:15], tmp=tmp_path
    )
    try:
        ip("netns", "add", ns.server)
        ip("netns", "add", ns.node)
        # Both ends are born inside their namespaces: the host's never sees them.
        ip(
            "link",
            "add",
            ns.server_if,
            "netns",
            ns.server,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.node,
        )
        ip("-n", ns.node, "link", "set", "eth0", "address", MAC)
        ip("-n", ns.server, "addr", "add", "10.99.0.1/24", "dev", ns.server_if)
        ip("-n", ns.server, "link", "set", "lo", "up")
        yield ns
    finally:
        if ns.dnsmasq is not None:
            ns.dnsmasq.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                ns.dnsmasq.wait(10)
        for log in ns.logs:
            log.close()
        for name in (ns.node, ns.server):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def phases(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[dict[str, dict[str, Any]], str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return {p["phase"]: p for p in map(json.loads, out.splitlines())}, err


def routes(phase: dict[str, Any], proto: int | None = None) -> list[tuple[str, str | None, int | None]]:
    return sorted(
        (r["dst"], r["gateway"], r["priority"])
        for r in phase["kernel"]["routes"]
        if proto is None or r["proto"] == proto
    )


def test_dhcp_then_static_then_dhcp(netns: Namespaces) -> None:
    netns.carrier(True)
    netns.start_dhcp_server()
    result, log = phases(netns.run_node("dhcp-then-static"))

    dhcp = result["dhcp"]
    kernel = dhcp["kernel"]
    metric = 1024 + kernel["index"]
    assert kernel["lo_up"] and kernel["eth0_up"]
    assert kernel["addresses"] == ["10.99.0.57/24"] and dhcp["state"]["addresses"] == ["10.99.0.57/24"]
    assert ("0.0.0.0/0", "10.99.0.1", metric) in routes(dhcp, proto=16)
    assert kernel["mtu"] == 1400  # the lease's MTU option
    assert dhcp["resolv"].splitlines()[1:] == ["search example.test", "nameserver 10.99.0.53"]
    assert dhcp["hostname"] == ["node-7", "dhcp"] and dhcp["sethostname"] == ["node-7"]
    assert "10.99.0.57\tnode-7\n" in dhcp["hosts"]
    assert "eth0 got 10.99.0.57/24 from DHCP server 10.99.0.1" in log

    assert result["renewed"]["state"]["renewals"] >= 1  # the background loop renews on T1
    assert result["renewed"]["kernel"]["addresses"] == ["10.99.0.57/24"]

    static = result["static"]
    assert static["state"]["methods"] == {"eth0": "static"}
    assert static["kernel"]["addresses"] == ["10.99.0.200/24"]  # the lease was released and removed
    assert static["kernel"]["mtu"] == 1280
    assert routes(static, proto=16) == []
    assert routes(static, proto=4) == [("0.0.0.0/0", "10.99.0.1", 50), ("10.98.0.0/16", "10.99.0.1", None)]
    assert static["resolv"].splitlines()[1:] == ["nameserver 10.99.0.9"]  # config overrides DHCP

    again = result["dhcp-again"]
    assert again["state"]["methods"] == {"eth0": "dhcp"}
    assert again["kernel"]["addresses"] == ["10.99.0.57/24"]
    assert routes(again, proto=4) == [] and ("0.0.0.0/0", "10.99.0.1", metric) in routes(again, proto=16)
    assert again["resolv"].splitlines()[1:] == ["search example.test", "nameserver 10.99.0.53"]

    flapped = result["flapped"]
    assert flapped["released"] and flapped["kernel"]["eth0_up"]
    assert flapped["kernel"]["addresses"] == ["10.99.0.57/24"]
    assert ("0.0.0.0/0", "10.99.0.1", metric) in routes(flapped, proto=16)  # the kernel had dropped it
    assert "DHCP client on eth0 stopped (link down?)" in log

    assert result["stopped"]["kernel"]["addresses"] == []  # stop() released the lease
    assert "DHCPRELEASE" in (netns.tmp / "dnsmasq.log").read_text()


def test_no_carrier_then_a_late_server(netns: Namespaces) -> None:
    netns.carrier(False)
    node = netns.run_node("late-server")
    assert node.stdout is not None
    first = json.loads(node.stdout.readline())  # configure() returned without a lease
    assert first["phase"] == "no-server" and first["state"]["addresses"] == []
    assert first["kernel"]["addresses"] == [] and first["kernel"]["eth0_up"]
    assert first["resolv"].splitlines()[1:] == []
    netns.carrier(True)
    netns.start_dhcp_server()
    rest, log = phases(node)
    assert "no carrier on eth0" in log
    late = rest["late-lease"]
    assert late["state"]["addresses"] == ["10.99.0.57/24"] and late["kernel"]["addresses"] == [
        "10.99.0.57/24"
    ]
    assert "nameserver 10.99.0.53" in late["resolv"]
