"""A real etcd and kube-apiserver on loopback, from the image's own Kubernetes binary, for host tests.

The node's Kubernetes clients (drain, uncordon) are proven against the API server they will meet on
the node, with the same authorization (Node, RBAC) and the NodeRestriction admission plugin, without
booting a VM: the API server starts in seconds natively where it takes minutes under TCG. There is no
kubelet and no controller manager: pods are API objects bound to a node name, and a test that needs
a pod to finish terminating does what a kubelet does (delete it with a grace period of 0).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talos_os import pki
from talos_os.upgrade.drain import Api

SERVICE_RANGE = "10.96.0.0/12"
START_TIMEOUT = 180.0  # a loaded 2-core machine; alone it takes a few seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalApiServer:
    """A running API server: its URL, CA and a way to act as anyone the CA can name."""

    url: str
    ca: pki.CertKey
    log: Path

    def client(self, name: str, groups: tuple[str, ...] = ()) -> Api:
        """An API client authenticated by a client certificate (CN = user, O = groups)."""
        cert = pki.issue_certificate(self.ca, name, organizations=groups, usage="client")
        return Api(self.url, self.ca.cert_pem, cert.cert_pem, cert.key_pem)

    def admin(self) -> Api:
        return self.client("kubernetes-admin", ("system:masters",))

    def node(self, name: str) -> Api:
        """The credentials a kubelet has: ``system:node:NAME`` in ``system:nodes``."""
        return self.client(f"system:node:{name}", ("system:nodes",))

    def must(self, method: str, path: str, body: Any = None) -> Any:
        """An admin call that has to succeed (the test's own setup)."""
        status, answer = self.admin().request(method, path, body)
        if status not in (200, 201):
            raise AssertionError(f"{method} {path}: {status} {answer}")
        return answer


def _wait_ready(api: Api, procs: dict[str, subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            status, _ = api.request("GET", "/readyz")
            if status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(
        f"the API server did not answer /readyz in {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}"
    )


@contextlib.contextmanager
def local_api_server(k8s: Path, work: Path) -> Iterator[LocalApiServer]:
    """Start etcd and kube-apiserver (the multi-call ``k8s`` binary) under ``work``; stop both after."""
    (work / "bin").mkdir(parents=True, exist_ok=True)
    for command in ("etcd", "kube-apiserver"):  # the binary runs the command its name says
        link = work / "bin" / command
        link.unlink(missing_ok=True)
        link.symlink_to(k8s.resolve())
    ca = pki.new_kubernetes_ca("kubernetes")
    serving = pki.issue_certificate(ca, "kube-apiserver", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    files = {
        "ca.crt": ca.cert_pem,
        "apiserver.crt": serving.cert_pem,
        "apiserver.key": serving.key_pem,
        "sa.key": pki.new_service_account_key(),
    }
    for name, data in files.items():
        (work / name).write_bytes(data)
    etcd_port, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
    log = work / "kube.log"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with open(log, "ab") as out:
        try:
            procs["etcd"] = subprocess.Popen(
                [str(work / "bin" / "etcd"), "--data-dir", str(work / "etcd"), "--name", "local",
                 "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                 "--initial-cluster", f"local=http://127.0.0.1:{etcd_peer}"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs["kube-apiserver"] = subprocess.Popen(
                [str(work / "bin" / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
                 "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                 "--secure-port", str(api_port),
                 "--tls-cert-file", str(work / "apiserver.crt"), "--tls-private-key-file", str(work / "apiserver.key"),
                 "--client-ca-file", str(work / "ca.crt"),
                 "--service-account-key-file", str(work / "sa.key"),
                 "--service-account-signing-key-file", str(work / "sa.key"),
                 "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                 "--service-cluster-ip-range", SERVICE_RANGE,
                 "--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            server = LocalApiServer(f"https://127.0.0.1:{api_port}", ca, log)
            _wait_ready(server.admin(), procs, log)
            yield server
        finally:
            for proc in reversed(procs.values()):
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
