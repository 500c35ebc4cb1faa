"""The cluster's network: a namespace with a bridge (the gateway address), a tap per node, dnsmasq.

Nothing is added to the host's own interfaces or routes: the bridge and the taps exist only inside
the namespace, so the nodes can reach each other and the gateway address and nothing else. The
commands are built by pure functions (tested on the host) and run by :func:`run`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from talos_os.cluster.state import BRIDGE, ClusterError, ClusterState, Node

Argv = list[str]


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command; a failure becomes a ClusterError with the command's own message."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise ClusterError(f"{argv[0]} is not installed: install it (deps/apt-packages.txt)") from None
    if check and result.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def exists(netns: str, run_dir: Path = Path("/run/netns")) -> bool:
    return (run_dir / netns).exists()


def setup_commands(state: ClusterState) -> list[Argv]:
    """Namespace, loopback, bridge with the gateway address, one tap per node on the bridge."""
    ns = state.netns
    cmds: list[Argv] = [
        ["ip", "netns", "add", ns],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "-n", ns, "addr", "add", f"{state.gateway}/{state.prefixlen}", "dev", BRIDGE],
        ["ip", "-n", ns, "link", "set", BRIDGE, "up"],
    ]
    for node in state.nodes:
        cmds += tap_commands(ns, node)
    return cmds


def tap_commands(ns: str, node: Node) -> list[Argv]:
    """A persistent tap (it outlives its QEMU, so a node can be started again) on the bridge."""
    return [
        ["ip", "-n", ns, "tuntap", "add", "dev", node.tap, "mode", "tap"],
        ["ip", "-n", ns, "link", "set", node.tap, "master", BRIDGE],
        ["ip", "-n", ns, "link", "set", node.tap, "up"],
    ]


def create(state: ClusterState) -> None:
    if exists(state.netns):
        raise ClusterError(
            f"network namespace {state.netns} already exists: destroy cluster {state.name} first "
            f"(`osctl cluster destroy --name {state.name}`)"
        )
    for argv in setup_commands(state):
        run(argv)


def delete(netns: str) -> None:
    """Delete the namespace (its bridge and taps go with it); a missing one is fine."""
    if exists(netns):
        run(["ip", "netns", "delete", netns])


def pids_in(netns: str) -> list[int]:
    """Processes still living in the namespace (only this cluster's processes can be there)."""
    if not exists(netns):
        return []
    out = run(["ip", "netns", "pids", netns], check=False).stdout
    return [int(word) for word in out.split() if word.isdigit()]


def dnsmasq_argv(state: ClusterState, dnsmasq: str = "dnsmasq") -> Argv:
    """dnsmasq in the namespace: DHCP only (no DNS), a static lease per node's MAC, a router option
    (kubeadm wants a default route) pointing at the bridge, which routes nowhere."""
    argv = [
        "ip", "netns", "exec", state.netns, dnsmasq,
        "--conf-file=/dev/null",
        "--port=0",
        f"--interface={BRIDGE}",
        "--bind-interfaces",
        "--dhcp-authoritative",
        "--user=root",
        f"--pid-file={state.file('dnsmasq.pid')}",
        f"--dhcp-leasefile={state.file('dnsmasq.leases')}",
        f"--log-facility={state.file('dnsmasq.log')}",
        "--log-dhcp",
        f"--dhcp-range={state.network_address},static,{state.netmask},12h",
        f"--dhcp-option=option:router,{state.gateway}",
    ]  # fmt: skip
    argv += [f"--dhcp-host={n.mac},{n.address},{n.name}" for n in state.nodes]
    return argv


def start_dnsmasq(state: ClusterState) -> None:
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(dnsmasq).exists():
        raise ClusterError("dnsmasq is not installed: apt-get install dnsmasq-base")
    run(dnsmasq_argv(state, dnsmasq))
