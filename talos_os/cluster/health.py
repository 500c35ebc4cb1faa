"""``osctl health``: is the cluster whole? Each check names what is wrong, one line per failure.

Checks, in the order a cluster comes up: every node's osd answers (Version, through the node's
forward; the server name checked is the node's address); the admin kubeconfig (osd's Kubeconfig
RPC on the init node); ``/readyz`` on every API server; etcd on every control plane (``/health``
and the member list, which must agree and hold every control plane); every node registered and
Ready. Everything is plain HTTPS or gRPC with client certificates, through the 127.0.0.1 forwards.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from talos_os import pki, talosconfig
from talos_os.cluster.state import ClusterState, Node

RPC_TIMEOUT = 10.0
HTTP_TIMEOUT = 20.0


@dataclass
class Check:
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class _Conn(http.client.HTTPSConnection):
    """HTTPS to a forwarded 127.0.0.1 port, verifying the certificate against the node's address."""

    def __init__(self, port: int, server_name: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__("127.0.0.1", port, context=context, timeout=timeout)
        self.server_name = server_name
        self.tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.server_name)


def https(
    endpoint: str, server_name: str, context: ssl.SSLContext, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    port = int(endpoint.rpartition(":")[2])
    conn = _Conn(port, server_name, context, HTTP_TIMEOUT)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def tls_context(
    directory: Path, prefix: str, ca_pem: bytes, crt_pem: bytes, key_pem: bytes
) -> ssl.SSLContext:
    """A client TLS context (ssl wants files for the key pair: written 0600 in the cluster directory)."""
    crt, key = directory / f"{prefix}.crt", directory / f"{prefix}.key"
    if not crt.exists():
        pki.write_secret(key, key_pem)
        pki.write_secret(crt, crt_pem)
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.load_cert_chain(crt, key)
    return ctx


class Cluster:
    """The credentials and endpoints the checks use, built from a cluster's state directory."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        config = talosconfig.load(state.file("configs/talosconfig"))
        self.os_ctx = config.current()
        self._kube: ssl.SSLContext | None = None
        self._etcd: ssl.SSLContext | None = None

    # ---- osd --------------------------------------------------------------------------------------------
    def osd_call(self, node: Node, call: Callable[[Any], Any]) -> Any:
        """One RPC to a node's osd through its forward (stubs imported here: only node commands need them)."""
        import grpc

        from talos_os.api.gen import node_pb2_grpc as pb_grpc

        creds = grpc.ssl_channel_credentials(
            root_certificates=self.os_ctx.ca_pem(),
            private_key=self.os_ctx.key_pem(),
            certificate_chain=self.os_ctx.crt_pem(),
        )
        options = [("grpc.ssl_target_name_override", node.address), ("grpc.enable_retries", 0)]
        with grpc.secure_channel(self.state.endpoint(node, "osd"), creds, options=options) as ch:
            return call(pb_grpc.NodeStub(ch))

    def version(self, node: Node) -> str:
        from talos_os.api.gen import node_pb2 as pb

        return str(self.osd_call(node, lambda s: s.Version(pb.Empty(), timeout=RPC_TIMEOUT)).hostname)

    # ---- Kubernetes -------------------------------------------------------------------------------------
    def kubeconfig(self) -> Path:
        """The admin kubeconfig from the init node's osd, its server the init node's forwarded 6443."""
        path = self.state.file("kubeconfig")
        if path.exists():
            return path
        from talos_os.api.gen import node_pb2 as pb

        init = self.state.control_planes[0]
        data = self.osd_call(init, lambda s: s.Kubeconfig(pb.Empty(), timeout=RPC_TIMEOUT)).bytes
        doc = yaml.safe_load(data)
        for cluster in doc["clusters"]:
            cluster["cluster"]["server"] = f"https://{self.state.endpoint(init, 'api')}"
            cluster["cluster"]["tls-server-name"] = init.address
        pki.write_secret(path, yaml.safe_dump(doc, sort_keys=False).encode())
        return path

    def kube_tls(self) -> ssl.SSLContext:
        if self._kube is None:
            doc = yaml.safe_load(self.kubeconfig().read_text())
            ca = base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])
            user = doc["users"][0]["user"]
            crt = base64.b64decode(user["client-certificate-data"])
            key = base64.b64decode(user["client-key-data"])
            self._kube = tls_context(self.state.directory, "kube-admin", ca, crt, key)
        return self._kube

    def kube_get(self, node: Node, path: str) -> tuple[int, bytes]:
        return https(self.state.endpoint(node, "api"), node.address, self.kube_tls(), path)

    # ---- etcd -------------------------------------------------------------------------------------------
    def etcd_tls(self) -> ssl.SSLContext:
        if self._etcd is None:
            doc = yaml.safe_load(self.state.file("configs/init.yaml").read_text())
            ca_doc = doc["cluster"]["etcdCA"]
            ca = pki.CertKey.from_b64(ca_doc["crt"], ca_doc["key"])
            crt, key = self.state.file("etcd-client.crt"), self.state.file("etcd-client.key")
            client = (
                pki.CertKey(crt.read_bytes(), key.read_bytes())
                if crt.exists() and key.exists()
                else pki.issue_certificate(ca, "talos-health", usage="client")
            )
            self._etcd = tls_context(
                self.state.directory, "etcd-client", ca.cert_pem, client.cert_pem, client.key_pem
            )
        return self._etcd

    def etcd(self, node: Node, path: str, body: bytes | None = None) -> Any:
        status, data = https(self.state.endpoint(node, "etcd"), node.address, self.etcd_tls(), path, body)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200].decode(errors='replace')}")
        return json.loads(data)


def _why(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = (details() if callable(details) else str(exc)) or type(exc).__name__
    if "EOF occurred in violation of protocol" in text or "Socket closed" in text:
        return "the forward's connection closed: nothing listens there yet"
    return text.strip().splitlines()[0][:200]


def check_osd(c: Cluster) -> Check:
    check = Check("osd answers on every node")
    for node in c.state.nodes:
        try:
            hostname = c.version(node)
        except Exception as exc:  # any failure is a finding, said in one line
            check.failures.append(f"{node.name}: osd does not answer ({_why(exc)})")
            continue
        if hostname != node.name:
            check.failures.append(f"{node.name}: osd answers as {hostname!r}")
    return check


def check_kubeconfig(c: Cluster) -> Check:
    check = Check("admin kubeconfig from osd")
    try:
        c.kube_tls()
    except Exception as exc:
        check.failures.append(f"{c.state.control_planes[0].name}: no kubeconfig ({_why(exc)})")
    return check


def check_apiservers(c: Cluster) -> Check:
    check = Check("/readyz on every API server")
    for node in c.state.control_planes:
        try:
            status, body = c.kube_get(node, "/readyz")
        except Exception as exc:
            check.failures.append(f"{node.name}: API server does not answer ({_why(exc)})")
            continue
        if status != 200:
            check.failures.append(
                f"{node.name}: /readyz is {status}: {body.decode(errors='replace').strip()[:200]}"
            )
    return check


def check_etcd(c: Cluster) -> Check:
    check = Check("etcd members healthy and in agreement")
    views: dict[str, set[str]] = {}
    for node in c.state.control_planes:
        try:
            health = c.etcd(node, "/health")
            members = c.etcd(node, "/v3/cluster/member/list", b"{}").get("members", [])
        except Exception as exc:
            check.failures.append(f"{node.name}: etcd does not answer ({_why(exc)})")
            continue
        if str(health.get("health")) != "true":
            check.failures.append(f"{node.name}: etcd reports unhealthy ({health})")
        names = {str(m.get("name") or f"unstarted {m.get('ID')}") for m in members}
        views[node.name] = names
        missing = {n.name for n in c.state.control_planes} - names
        if missing:
            check.failures.append(
                f"{node.name}: etcd members lack {', '.join(sorted(missing))} (have {', '.join(sorted(names))})"
            )
    if len({frozenset(v) for v in views.values()}) > 1:
        detail = "; ".join(f"{k} sees {', '.join(sorted(v))}" for k, v in sorted(views.items()))
        check.failures.append(f"etcd members disagree: {detail}")
    return check


def node_conditions(items: list[dict[str, Any]]) -> dict[str, str]:
    """Node name -> its Ready condition's status (``True``/``False``/``Unknown``)."""
    out = {}
    for item in items:
        ready = [c for c in item.get("status", {}).get("conditions", []) if c.get("type") == "Ready"]
        out[item["metadata"]["name"]] = ready[0]["status"] if ready else "Unknown"
    return out


def check_nodes(c: Cluster) -> Check:
    check = Check("all nodes Ready")
    init = c.state.control_planes[0]
    try:
        status, body = c.kube_get(init, "/api/v1/nodes")
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        ready = node_conditions(json.loads(body)["items"])
    except Exception as exc:
        check.failures.append(f"cannot list nodes ({_why(exc)})")
        return check
    for node in c.state.nodes:
        if node.name not in ready:
            check.failures.append(f"{node.name}: not registered with Kubernetes")
        elif ready[node.name] != "True":
            check.failures.append(f"{node.name}: NotReady (Ready={ready[node.name]})")
    return check


# (function, needs the kubeconfig): without one the Kubernetes checks fail with that reason.
CHECKS: list[tuple[Callable[[Cluster], Check], bool]] = [
    (check_osd, False),
    (check_kubeconfig, False),
    (check_apiservers, True),
    (check_etcd, False),
    (check_nodes, True),
]
TITLES: dict[Callable[[Cluster], Check], str] = {
    check_apiservers: "/readyz on every API server",
    check_nodes: "all nodes Ready",
}


def run_checks(state: ClusterState) -> list[Check]:
    """Every check, in order; one result each."""
    cluster = Cluster(state)
    results: list[Check] = []
    have_kubeconfig = True
    for fn, needs_kube in CHECKS:
        if needs_kube and not have_kubeconfig:
            results.append(Check(TITLES[fn], ["no admin kubeconfig yet (see above)"]))
            continue
        result = fn(cluster)
        if fn is check_kubeconfig:
            have_kubeconfig = result.ok
        results.append(result)
    return results


def wait_healthy(
    state: ClusterState, timeout: float, progress: Callable[[str, float], None], every: float = 10.0
) -> float:
    """Run the checks until all pass; ``progress`` hears the first failing line; returns the seconds."""
    start = time.monotonic()
    while True:
        results = run_checks(state)
        failing = [r for r in results if not r.ok]
        elapsed = time.monotonic() - start
        if not failing:
            return elapsed
        progress(f"{failing[0].name}: {failing[0].failures[0]}", elapsed)
        if elapsed > timeout:
            lines = "; ".join(f for r in failing for f in r.failures)
            raise TimeoutError(f"the cluster was not healthy after {timeout:.0f} s: {lines}")
        time.sleep(every)
