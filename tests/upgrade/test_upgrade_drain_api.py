"""The upgrade's drain against a real kube-apiserver (the image's own binary, on loopback).

The node drains itself with the credentials it has: a worker only has the kubelet's
(``system:node:NAME``). Under the Node authorizer and NodeRestriction that identity may cordon its
own node and evict the pods bound to it, and may not touch another node. A PodDisruptionBudget
holds an eviction back (429) until it allows it; DaemonSet and static (mirror) pods stay. No kubelet
runs: the test does the kubelet's part of a graceful deletion (delete with a grace period of 0).
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from bakery.image import BakeResult
from talos_os.upgrade import drain
from tools.kubeapi import LocalApiServer, local_api_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server(baked_image: BakeResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApiServer]:
    k8s = baked_image.raw.parent / "kubectl"  # the bake's multi-call Kubernetes binary
    with local_api_server(k8s, tmp_path_factory.mktemp("kubeapi")) as api:
        yield api


def pod(name: str, node: str, *, labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, **meta},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }


def names(server: LocalApiServer, node: str) -> set[str]:
    return {p["metadata"]["name"] for p in drain.pods_on(server.admin(), node)}


def set_phase(server: LocalApiServer, name: str, phase: str) -> None:
    ready = [{"type": "Ready", "status": "True"}] if phase == "Running" else []
    status, answer = server.admin().request(
        "PATCH", f"/api/v1/namespaces/default/pods/{name}/status",
        {"status": {"phase": phase, "conditions": ready}}, "application/merge-patch+json",
    )  # fmt: skip
    assert status == 200, answer


class Kubelet(threading.Thread):
    """The kubelet's share of a graceful deletion: once a pod is marked for deletion, remove it."""

    def __init__(self, server: LocalApiServer, node: str) -> None:
        super().__init__(daemon=True)
        self.api, self.node, self.stop = server.node(node), node, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for p in drain.pods_on(self.api, self.node):
                if p["metadata"].get("deletionTimestamp"):
                    path = f"/api/v1/namespaces/default/pods/{urllib.parse.quote(p['metadata']['name'])}"
                    self.api.request("DELETE", path, {"kind": "DeleteOptions", "gracePeriodSeconds": 0})


def test_a_worker_drains_itself_with_its_kubelet_identity(server: LocalApiServer) -> None:
    for node in ("w1", "w2"):
        server.must("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    server.must("POST", "/api/v1/namespaces/default/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})  # fmt: skip
    pods = [
        pod("web", "w1"),
        pod("guarded", "w1", labels={"app": "guarded"}),
        pod("logs-agent", "w1", ownerReferences=[{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                                                  "uid": "0c6a1f4e-0000-4000-8000-000000000001"}]),
        pod("static-w1", "w1", annotations={drain.MIRROR: "0123"}),
        pod("finished", "w1"),
        pod("elsewhere", "w2"),
    ]  # fmt: skip
    for p in pods:
        server.must("POST", "/api/v1/namespaces/default/pods", p)
    # what the kubelet would report: a Pending pod is evicted regardless of budgets, a Running one is not
    set_phase(server, "guarded", "Running")
    set_phase(server, "finished", "Succeeded")
    server.must("POST", "/apis/policy/v1/namespaces/default/poddisruptionbudgets", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "guarded"}}},
    })  # fmt: skip

    w1 = server.node("w1")
    with pytest.raises(drain.KubeError, match="cannot cordon node w2: the API answered 403"):
        drain.set_unschedulable(w1, "w2", True)  # NodeRestriction: a kubelet touches its own node only

    held: list[str] = []

    def log(line: str) -> None:  # the budget allows the eviction only after drain has been refused once
        held.append(line)
        if "guarded cannot be evicted yet" in line and sum("guarded cannot" in h for h in held) == 1:
            server.must("DELETE", "/apis/policy/v1/namespaces/default/poddisruptionbudgets/guarded")

    kubelet = Kubelet(server, "w1")
    kubelet.start()
    try:
        report = drain.drain(w1, "w1", timeout=120, log=log)
    finally:
        kubelet.stop.set()
        kubelet.join()
    assert sorted(report.evicted) == ["default/guarded", "default/web"], held
    assert report.skipped == {
        "default/logs-agent": "DaemonSet", "default/static-w1": "static pod", "default/finished": "finished"
    }  # fmt: skip
    assert report.remaining == []
    assert any("guarded cannot be evicted yet" in line for line in held), "the budget held it back first"
    assert names(server, "w1") == {"logs-agent", "static-w1", "finished"} and names(server, "w2") == {
        "elsewhere"
    }
    node = server.must("GET", "/api/v1/nodes/w1")
    assert node["spec"]["unschedulable"] is True
    drain.uncordon(w1, "w1")
    assert not server.must("GET", "/api/v1/nodes/w1")["spec"].get("unschedulable")
    assert not server.must("GET", "/api/v1/nodes/w2")["spec"].get("unschedulable")
