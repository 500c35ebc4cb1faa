"""Cordon, drain and uncordon against a fake Kubernetes API served on loopback (real HTTP)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from talos_os.upgrade import drain


class FakeApi:
    """Nodes and pods in memory; evictions delete pods (the first one answers 429 once, like a PDB)."""

    def __init__(self) -> None:
        self.unschedulable: bool | None = None
        self.calls: list[tuple[str, str]] = []
        self.budget_refusals = 1
        self.pods: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def add(self, ns: str, name: str, node: str = "n1", phase: str = "Running", **meta: Any) -> None:
        self.pods[f"{ns}/{name}"] = {
            "metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}", **meta},
            "spec": {"nodeName": node},
            "status": {"phase": phase},
        }


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, drain.Api]]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def _reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n)) if n else None

        def do_PATCH(self) -> None:
            body = self._body()
            with fake.lock:
                fake.calls.append(("PATCH", self.path))
                assert self.headers["Content-Type"] == "application/merge-patch+json"
                fake.unschedulable = body["spec"]["unschedulable"]
            self._reply(200, {"kind": "Node"})

        def do_GET(self) -> None:
            with fake.lock:
                fake.calls.append(("GET", self.path))
                if self.path.startswith("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1"):
                    items = [p for p in fake.pods.values() if p["spec"]["nodeName"] == "n1"]
                    return self._reply(200, {"items": items})
                parts = self.path.split("/")  # /api/v1/namespaces/NS/pods/NAME
                pod = fake.pods.get(f"{parts[4]}/{parts[6]}")
            self._reply(200, pod) if pod else self._reply(404, {"message": "not found"})

        def do_POST(self) -> None:
            body = self._body()
            parts = self.path.split("/")
            key = f"{parts[4]}/{parts[6]}"
            with fake.lock:
                fake.calls.append(("POST", self.path))
                assert body["kind"] == "Eviction" and body["metadata"]["name"] == parts[6]
                if key == "default/web-1" and fake.budget_refusals:
                    fake.budget_refusals -= 1
                    return self._reply(
                        429, {"message": "Cannot evict pod as it would violate the pod's disruption budget."}
                    )
                if fake.pods.pop(key, None) is None:
                    return self._reply(404, {"message": "not found"})
            self._reply(201, {"kind": "Status"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield fake, drain.Api(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_drain_cordons_evicts_what_kubectl_would_and_waits(api: tuple[FakeApi, drain.Api]) -> None:
    fake, client = api
    fake.add("default", "web-1")
    fake.add("default", "web-2")
    fake.add("kube-system", "kube-apiserver-n1", annotations={drain.MIRROR: "x"})
    fake.add("kube-system", "proxy-abc", ownerReferences=[{"kind": "DaemonSet", "name": "kube-proxy"}])
    fake.add("default", "job-done", phase="Succeeded")
    fake.add("default", "elsewhere", node="n2")
    lines: list[str] = []
    report = drain.drain(client, "n1", timeout=30, log=lines.append, sleep=lambda _s: None)
    assert fake.unschedulable is True
    assert sorted(report.evicted) == ["default/web-1", "default/web-2"]
    assert report.skipped == {
        "kube-system/kube-apiserver-n1": "static pod",
        "kube-system/proxy-abc": "DaemonSet",
        "default/job-done": "finished",
    }
    assert not report.remaining and "default/elsewhere" in fake.pods
    assert any("disruption budget" in line for line in lines), "the 429 was retried, and said so"
    assert fake.calls[0] == ("PATCH", "/api/v1/nodes/n1")


def test_uncordon_clears_unschedulable(api: tuple[FakeApi, drain.Api]) -> None:
    fake, client = api
    drain.set_unschedulable(client, "n1", True)
    drain.uncordon(client, "n1")
    assert fake.unschedulable is None  # merge-patch null removes the field, as kubectl uncordon does


def test_an_unreachable_api_is_one_sentence() -> None:
    client = drain.Api("http://127.0.0.1:9", timeout=2)
    with pytest.raises(
        drain.KubeError, match=r"the Kubernetes API at http://127\.0\.0\.1:9 cannot be reached"
    ):
        drain.drain(client, "n1", timeout=1)


def test_an_api_that_times_out_is_tried_again_until_the_deadline(api: tuple[FakeApi, drain.Api]) -> None:
    """A control plane too slow to answer in time (under emulation) delays the drain, not skips it."""
    fake, client = api

    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures = failures

        def request(
            self, method: str, path: str, body: Any = None, content_type: str = "application/json"
        ) -> tuple[int, Any]:
            if self.failures:
                self.failures -= 1
                raise drain.KubeError(
                    "the Kubernetes API at x cannot be reached: The read operation timed out"
                )
            return client.request(method, path, body, content_type)

    lines: list[str] = []
    report = drain.drain(Flaky(2), "n1", timeout=60, log=lines.append, sleep=lambda _s: None)
    assert sum("timed out; retrying" in line for line in lines) == 2, lines
    assert fake.unschedulable is True and lines[-1].startswith("drain: 0 pods evicted"), (lines, report)
    # past the deadline the last failure is raised (the agent then reboots undrained, saying why)
    ticks = iter(range(0, 1000, 5))
    with pytest.raises(drain.KubeError, match="timed out"):
        drain.drain(Flaky(1000), "n1", timeout=12, sleep=lambda _s: None, clock=lambda: float(next(ticks)))


def test_kubeconfig_credentials_are_read(tmp_path: Path) -> None:
    import base64

    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    cfg = tmp_path / "admin.conf"
    cfg.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: admin@c\n"
        f"clusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: {b64('CA')}\n"
        "contexts:\n- name: admin@c\n  context: {cluster: c, user: admin}\n"
        f"users:\n- name: admin\n  user:\n    client-certificate-data: {b64('CRT')}\n    client-key-data: {b64('KEY')}\n"
    )
    got = drain.Api.from_kubeconfig(cfg)
    assert (got.server, got.ca_pem, got.cert_pem, got.key_pem) == (
        "https://10.0.0.1:6443",
        b"CA",
        b"CRT",
        b"KEY",
    )
    with pytest.raises(drain.KubeError, match="cannot read the kubeconfig"):
        drain.Api.from_kubeconfig(tmp_path / "missing.conf")


def test_a_kubelet_kubeconfig_names_its_rotating_certificate_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kubeadm's kubelet.conf points at /var/lib/kubelet/pki/kubelet-client-current.pem (cert and key)."""
    pem = tmp_path / "pki" / "kubelet-client-current.pem"
    pem.parent.mkdir()
    pem.write_bytes(b"CRT+KEY")
    cfg = tmp_path / "kubelet.conf"
    cfg.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: k\n"
        "clusters:\n- name: c\n  cluster: {server: 'https://10.0.0.1:6443', certificate-authority-data: Q0E=}\n"
        "contexts:\n- name: k\n  context: {cluster: c, user: u}\n"
        "users:\n- name: u\n  user: {client-certificate: pki/kubelet-client-current.pem, "
        "client-key: pki/kubelet-client-current.pem}\n"
    )
    got = drain.Api.from_kubeconfig(cfg)
    assert (got.ca_pem, got.cert_pem, got.key_pem) == (b"CA", b"CRT+KEY", b"CRT+KEY")
    pem.unlink()
    with pytest.raises(drain.KubeError, match="cannot read client-certificate of the kubeconfig"):
        drain.Api.from_kubeconfig(cfg)
    # the node's own credentials: admin.conf wins, kubelet.conf otherwise, None without either
    monkeypatch.setattr(drain, "ADMIN_KUBECONFIG", tmp_path / "admin.conf")
    monkeypatch.setattr(drain, "KUBELET_KUBECONFIG", tmp_path / "absent.conf")
    assert drain.Api.of_node() is None
    pem.write_bytes(b"CRT+KEY")
    monkeypatch.setattr(drain, "KUBELET_KUBECONFIG", cfg)
    found = drain.Api.of_node()
    assert found is not None and found[1] == cfg
