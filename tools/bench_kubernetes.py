"""`make bench` figures for Kubernetes: the payload's build (cold and warm), its sizes, and an init
node's way from QEMU start to Ready and to its first pod Running, with each component's memory."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

from bakery.image import BakeResult
from bakery.kubernetes import build
from tools import kubenode, nodevm


def report_build(epoch: int) -> None:
    """Cold: an empty Go build cache (modules already downloaded). Warm: Go's caches as they are."""
    with tempfile.TemporaryDirectory(prefix="bench-k8s-") as tmp:
        os.environ["GOCACHE"] = str(Path(tmp) / "gocache")
        try:
            cold = build.compile_payload(Path(tmp) / "k8s-cold", epoch)
        finally:
            del os.environ["GOCACHE"]
        warm = build.compile_payload(Path(tmp) / "k8s-warm", epoch)
    print(f"kubernetes payload build: cold {cold:.0f} s (empty Go build cache), warm {warm:.1f} s (Go caches warm); "
          "a bake whose recipe is unchanged runs no Go at all")  # fmt: skip


def report_sizes(image: BakeResult) -> None:
    m = json.loads(image.manifest.read_text())
    k = m.get("kubernetes") or {}
    print(
        f"kubernetes payload: binary {k.get('binary_bytes', 0) / 2**20:.1f} MiB, images archive "
        f"{k.get('images_archive_bytes', 0) / 2**20:.1f} MiB ({len(k.get('images') or {})} images, one shared "
        f"binary layer); squashfs {m['squashfs_bytes'] / 2**20:.1f} MiB; image {m['size_allocated'] / 2**20:.1f} "
        "MiB allocated"
    )


def _rss_mib(node: kubenode.KubeNode, pid: object) -> str:
    status = node.osctl("read", f"/proc/{pid}/status").stdout
    m = re.search(r"VmRSS:\s+(\d+) kB", status)
    return f"{int(m.group(1)) / 1024:.0f} MiB" if m else "?"


def report_node(image: BakeResult) -> None:
    """Boot an init node (4 GiB, 2 vCPUs): seconds to each milestone, then each component's memory."""
    node_image = nodevm.NodeImage.from_manifest(image.manifest)
    with (
        tempfile.TemporaryDirectory(prefix="bench-k8s-node-") as tmp,
        kubenode.kube_node(node_image, image.raw.parent / "kubectl", Path(tmp)) as node,
    ):
        started = time.monotonic()
        times = node.wait_kubernetes()
        ready = time.monotonic() - started

        def dns_running() -> bool:
            pods = json.loads(
                node.kubectl(
                    "get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns", "-o", "json"
                ).stdout
            )["items"]
            return any(p["status"].get("phase") == "Running" for p in pods)

        node.wait("the first pod (CoreDNS) Running", dns_running, 2400)
        first_pod = time.monotonic() - started
        print(
            f"init node (TCG, 4 GiB, 2 vCPUs): node ready (init) {times['node ready']:.0f} s, "
            f"Kubernetes node Ready {ready:.0f} s, first pod Running {first_pod:.0f} s after QEMU start"
        )
        containers = json.loads(node.osctl("containers", "-k", "-o", "json").stdout)
        for c in containers:
            if c.get("pod") and c.get("pid") and c["pod"].startswith("kube-system/"):
                print(f"  {c['name']}: {_rss_mib(node, c['pid'])} resident")
        services = json.loads(node.osctl("services", "-o", "json").stdout)
        for s in services:
            if s["id"] in ("kubelet", "containerd", "osd") and s.get("pid"):
                print(f"  {s['id']} (service): {_rss_mib(node, s['pid'])} resident")
