"""The ``routes`` service: pod traffic between nodes, without an overlay.

Every node's pods live on its own bridge (``cni0``) in the pod range the controller manager gave
it. Nodes on one network reach each other's pods by plain routes: this service lists the Nodes
with the kubelet's credentials and keeps one route
per other node, ``<its podCIDR> via <its InternalIP>``, marked with our own routing protocol number
so only routes we made are ever replaced or removed. It also keeps one NAT rule, before the bridge
plugin's masquerade: traffic from a pod to another pod is never masqueraded, so pods see each
other's addresses (traffic leaving the pod ranges still is).

The Node authorizer lets a kubelet read only its own Node (AuthorizeNodeWithSelectors), so on
control planes this service also makes sure of a ClusterRole that lets the group ``system:nodes``
get, list and watch Nodes (what every node could read before that feature), with the admin
kubeconfig kubeadm wrote; until it exists a worker's list is refused and retried.

The decisions (:func:`desired`, :func:`diff`, :func:`masquerade_exemptions`) are pure and tested
on the host; netlink (pyroute2), iptables and the API are thin effects around them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talos_os import pki
from talos_os.kubernetes.podcidr import KUBECONFIG, Credentials, read_kubeconfig

PROTO = 193  # routing protocol number marking our routes (``ip route show proto 193``)
POLL = 10.0
ADMIN_KUBECONFIG = Path("/etc/kubernetes/admin.conf")
IPTABLES = {4: "/usr/sbin/iptables", 6: "/usr/sbin/ip6tables"}
COMMENT = "talos: pod to pod is not masqueraded"


def say(message: str) -> None:
    print(f"[routes] {message}", flush=True)


@dataclass(frozen=True)
class PodRoute:
    """A route to another node's pods."""

    cidr: str
    gateway: str
    node: str


def internal_ips(node: Mapping[str, Any]) -> list[str]:
    """A Node's InternalIP addresses, as its kubelet reported them."""
    addresses = (node.get("status") or {}).get("addresses") or []
    return [a["address"] for a in addresses if a.get("type") == "InternalIP" and a.get("address")]


def pod_cidrs(node: Mapping[str, Any]) -> list[str]:
    spec = node.get("spec") or {}
    return list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))


def desired(nodes: Iterable[Mapping[str, Any]], me: str) -> dict[str, PodRoute]:
    """cidr -> route for every other node that has a pod range and an address of the same family."""
    routes: dict[str, PodRoute] = {}
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name") or "")
        if not name or name == me:
            continue
        ips = internal_ips(node)
        for cidr in pod_cidrs(node):
            try:
                net = ipaddress.ip_network(cidr)
            except ValueError:
                continue
            gateway = next((ip for ip in ips if ipaddress.ip_address(ip).version == net.version), None)
            if gateway is not None:
                routes[str(net)] = PodRoute(str(net), gateway, name)
    return routes


def diff(current: Mapping[str, str], wanted: Mapping[str, PodRoute]) -> tuple[list[PodRoute], list[str]]:
    """(routes to add or change, cidrs to remove) to go from ``current`` (cidr -> gateway) to ``wanted``."""
    replace = [r for cidr, r in sorted(wanted.items()) if current.get(cidr) != r.gateway]
    remove = sorted(cidr for cidr in current if cidr not in wanted)
    return replace, remove


def masquerade_exemptions(cluster_pod_subnets: Sequence[str]) -> list[tuple[int, list[str]]]:
    """(IP version, iptables rule spec) that exempts pod-to-pod traffic from masquerading."""
    rules: list[tuple[int, list[str]]] = []
    for subnet in cluster_pod_subnets:
        net = ipaddress.ip_network(subnet)
        spec = ["-s", str(net), "-d", str(net), "-m", "comment", "--comment", COMMENT, "-j", "RETURN"]
        rules.append((net.version, spec))
    return rules


NODE_READER = "talos:node-reader"


def rbac_objects() -> list[tuple[str, dict[str, Any]]]:
    """(API path, object) of the ClusterRole and ClusterRoleBinding that let nodes list Nodes."""
    meta = {"name": NODE_READER, "labels": {"app.kubernetes.io/managed-by": "talos-os"}}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta,
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_READER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
    }
    base = "/apis/rbac.authorization.k8s.io/v1"
    return [(f"{base}/clusterroles", role), (f"{base}/clusterrolebindings", binding)]


# --- effects ---------------------------------------------------------------------------------------


def _context(creds: Credentials) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=creds.ca.decode())
    with tempfile.TemporaryDirectory(prefix="talos-routes-") as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        pki.write_secret(cert, creds.cert)
        pki.write_secret(key, creds.key)
        context.load_cert_chain(cert, key)
    return context


def ensure_rbac(admin: Credentials, timeout: float = 20.0) -> None:
    """Create the node reader role and binding; one that exists already (409) is fine."""
    context = _context(admin)
    for path, obj in rbac_objects():
        request = urllib.request.Request(
            f"{admin.server}{path}",
            data=json.dumps(obj).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=timeout):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise


def list_nodes(creds: Credentials, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every Node object, read with the kubelet's client certificate."""
    context = _context(creds)
    with urllib.request.urlopen(f"{creds.server}/api/v1/nodes", context=context, timeout=timeout) as resp:
        return list(json.load(resp).get("items") or [])


class Netlink:
    """Our routes in the main table, through pyroute2 (the node has no ``ip`` binary)."""

    def current(self) -> dict[str, str]:
        from talos_os.lib.netlink import IPRoute

        found: dict[str, str] = {}
        with IPRoute() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=family, proto=PROTO):
                    if int(r.get("proto")) != PROTO:
                        continue
                    dst, gateway = r.get_attr("RTA_DST"), r.get_attr("RTA_GATEWAY")
                    if dst and gateway:
                        found[str(ipaddress.ip_network(f"{dst}/{r['dst_len']}"))] = str(gateway)
        return found

    def replace(self, route: PodRoute) -> None:
        from talos_os.lib.netlink import IPRoute

        with IPRoute() as ipr:
            ipr.route("replace", dst=route.cidr, gateway=route.gateway, proto=PROTO)

    def remove(self, cidr: str) -> None:
        from talos_os.lib.netlink import IPRoute

        with IPRoute() as ipr:
            ipr.route("del", dst=cidr, proto=PROTO)


def ensure_exemption(version: int, spec: list[str], run: Callable[[list[str]], int]) -> bool:
    """Insert the rule at the top of nat POSTROUTING unless it is there; True when it was added."""
    binary = IPTABLES[version]
    if run([binary, "-w", "-t", "nat", "-C", "POSTROUTING", *spec]) == 0:
        return False
    code = run([binary, "-w", "-t", "nat", "-I", "POSTROUTING", "1", *spec])
    if code != 0:
        raise OSError(f"{binary} could not add the pod-to-pod rule (exit {code})")
    return True


def _run(argv: list[str]) -> int:
    return subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def sync_once(me: str, nodes: list[dict[str, Any]], netlink: Netlink) -> tuple[list[PodRoute], list[str]]:
    """Make our routes what the Nodes say; returns what changed."""
    replace, remove = diff(netlink.current(), desired(nodes, me))
    for route in replace:
        netlink.replace(route)
    for cidr in remove:
        netlink.remove(cidr)
    return replace, remove


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Route to every other node's pod range.")
    parser.add_argument("--node", required=True)
    parser.add_argument("--pod-subnet", action="append", default=[], help="the cluster's pod ranges")
    parser.add_argument("--kubeconfig", type=Path, default=KUBECONFIG)
    parser.add_argument("--admin-kubeconfig", type=Path, default=ADMIN_KUBECONFIG)
    args = parser.parse_args(argv)
    netlink = Netlink()
    exempted = False
    granted = False
    last = ""
    while True:
        if not granted and args.admin_kubeconfig.exists():  # a control plane
            try:
                ensure_rbac(read_kubeconfig(args.admin_kubeconfig))
                granted = True
                say(f"nodes may list Nodes (ClusterRole {NODE_READER} bound to system:nodes)")
            except (OSError, ValueError, KeyError, ssl.SSLError) as exc:
                why = f"cannot grant nodes the Node list yet: {exc}"
                if why != last:
                    say(why)
                    last = why
        if not exempted:
            try:
                for version, spec in masquerade_exemptions(args.pod_subnet):
                    if ensure_exemption(version, spec, _run):
                        say(f"pod-to-pod traffic within {spec[1]} is not masqueraded")
                exempted = True
            except OSError as exc:
                say(f"cannot set the NAT rule yet: {exc}")
        try:
            nodes = list_nodes(read_kubeconfig(args.kubeconfig))
            replace, remove = sync_once(args.node, nodes, netlink)
        except (OSError, ValueError, KeyError, ssl.SSLError) as exc:  # no kubeconfig or API yet
            why = f"cannot list the nodes yet: {exc}"
            if why != last:
                say(why)
                last = why
        else:
            last = ""
            for route in replace:
                say(f"route {route.cidr} via {route.gateway} (node {route.node})")
            for cidr in remove:
                say(f"route {cidr} removed (its node is gone)")
        time.sleep(POLL)


if __name__ == "__main__":
    sys.exit(main())
