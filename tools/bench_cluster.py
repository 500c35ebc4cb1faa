"""`make bench` figures for local clusters: `osctl cluster create` to healthy for 1+1 and 1+2 nodes
under TCG, the memory each role uses (inside the node and QEMU's RSS on the host), and trustd's time
to issue the workers' certificates (from its log on the init node).

Run alone with ``python -m tools.bench_cluster`` (it bakes the release image first, a copy when the
step cache has it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bakery.image import BakeResult
from talos_os.cluster import health, vm
from talos_os.cluster.state import ClusterState, Node
from tools import bench_bake

OSCTL = Path(sys.executable).with_name("osctl")
OUT = Path("_build/bench-cluster")
ISSUED = re.compile(r"issued an? (\S+) certificate for (\S+) .* in ([\d.]+) ms")


def _qemu_rss_mib(state: ClusterState, node: Node) -> float:
    pid = vm.running_pid(state, node)
    if pid is None:
        return 0.0
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def _node_used_mib(checker: health.Cluster, node: Node) -> float:
    from talos_os.api.gen import node_pb2 as pb

    reply = checker.osd_call(node, lambda s: s.Memory(pb.Empty(), timeout=30))
    return (int(reply.total) - int(reply.available)) / 2**20


def _trustd_issued(talosconfig: Path, context: str) -> str:
    """trustd's own lines on the init node: which certificate, for whom, how long it took."""
    logs = subprocess.run(
        [str(OSCTL), "--talosconfig", str(talosconfig), "--context", context, "logs", "trustd"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    found = ISSUED.findall(logs.stdout)
    return "; ".join(f"{kind} for {who} in {ms} ms" for kind, who, ms in found) or "no issue lines in its log"


def report_cluster(image: BakeResult, workers: int) -> None:
    """Create a 1+``workers`` cluster with the CLI (waiting for health), print figures, destroy it."""
    name = f"bench-{os.getpid()}-{workers}"
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root, talosconfig = Path(tmp) / "clusters", Path(tmp) / "talosconfig"
        base = [str(OSCTL), "--talosconfig", str(talosconfig), "cluster"]
        start = time.monotonic()
        created = subprocess.run(
            [*base, "create", "--name", name, "--workers", str(workers), "--image", str(image.raw),
             "--state", str(root), "--memory", "4096", "--memory-workers", "2048", "--cpus-workers", "1"],
            capture_output=True, text=True, timeout=3600, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - start
        try:
            if created.returncode != 0:
                print(f"cluster 1+{workers}: not healthy ({created.stderr.strip().splitlines()[-1:]})")
                return
            print(f"cluster 1+{workers}: `osctl cluster create` to healthy in {seconds:.0f} s (TCG)")
            state = ClusterState.load(root / name)
            checker = health.Cluster(state)
            for node in state.nodes:
                used = _node_used_mib(checker, node)
                print(f"  {node.name} ({node.role}, {node.memory_mb} MiB): {used:.0f} MiB used in the node, "
                      f"QEMU RSS {_qemu_rss_mib(state, node):.0f} MiB")  # fmt: skip
            print(f"  trustd issued: {_trustd_issued(talosconfig, str(state.context))}")
        finally:
            subprocess.run([*base, "destroy", "--name", name, "--state", str(root)],
                           capture_output=True, timeout=300, check=False)  # fmt: skip


def report(image: BakeResult | None = None) -> None:
    if image is None:
        image = bench_bake.release_image(OUT)
    for workers in (1, 2):
        report_cluster(image, workers)


if __name__ == "__main__":
    report()
