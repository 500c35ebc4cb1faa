"""`make demo`: generate a cluster's configs, bake the default image, boot an init node with its config
in QEMU, ask it `osctl version` and `osctl services` over mutual TLS, then watch it bootstrap
Kubernetes and answer `kubectl get nodes` and `kubectl get pods -A`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bakery import qemu
from bakery.errors import BakeError
from bakery.image import BakeOptions, bake
from bakery.lockguard import guarded
from tools import kubenode, nodevm

OUT = Path("_out")
BIN = Path(sys.executable).parent


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def main() -> int:
    configs = OUT / "demo"
    endpoint = kubenode.ENDPOINT  # the node's address on QEMU's user network
    step(f"osctl config generate demo {endpoint} -o {configs}")
    subprocess.run([BIN / "osctl", "config", "generate", "demo", endpoint, "-o", configs, "--force"],
                   check=True)  # fmt: skip
    for name in ("init.yaml", "controlplane.yaml", "worker.yaml"):
        step(f"osctl config validate {configs / name} --mode metal")
        subprocess.run([BIN / "osctl", "config", "validate", configs / name, "--mode", "metal"], check=True)

    step("talos-bake raw --platform kvm (default image; the first bake builds Kubernetes, ~11 min)")
    try:
        image, _moved = guarded(bake, BakeOptions(platform="kvm", out=OUT), update_lock=False, say=print)
    except BakeError as exc:
        print(f"bake failed: {exc}", file=sys.stderr)
        return 1
    print(f"image: {image.raw}\nmanifest: {image.manifest}\nkubectl: {OUT / 'kubectl'}")

    node_image = nodevm.NodeImage.from_manifest(image.manifest)
    accel = "KVM" if qemu.kvm_usable() else "TCG: software emulation, Kubernetes takes many minutes"
    step(f"booting the init node in QEMU ({accel}); its config comes from a loopback HTTP server")
    start = time.monotonic()
    pair = ((configs / "init.yaml").read_text(), (configs / "talosconfig").read_text())
    with kubenode.kube_node(node_image, OUT / "kubectl", configs / "node", configs=pair) as node:
        try:
            _m, banner_s = node.vm.wait_for(qemu.BANNER, 900)
            hostname, ready_s = nodevm.wait_ready(node.vm, 900)
            for line in node.vm.lines:
                if "[talos]" in line:
                    print("    " + line.strip())
            print(f"\nbanner after {banner_s:.1f} s, node {hostname} ready after {ready_s:.1f} s")
            step(f"waiting for the node API (osd, mutual TLS) on {node.osd}")
            api_s = nodevm.wait_api(node.talosconfig, node.osd, 600)
            print(f"osd answered {api_s:.1f} s after the node was ready")
            for command in (["version"], ["services"]):
                step(f"osctl --talosconfig {node.talosconfig} -e {node.osd} {' '.join(command)}")
                result = node.osctl(*command)
                print(result.stdout + result.stderr, end="")
                if result.returncode != 0:
                    return 1
            step("waiting for Kubernetes: kubeadm bootstraps the control plane, then the node turns Ready")
            node.wait(
                "the API server's /readyz",
                lambda: node.kubectl("get", "--raw", "/readyz", check=False).stdout == "ok",
                2400,
            )
            node.wait(f"node {kubenode.HOSTNAME} Ready", node.node_ready, 2400)
        except TimeoutError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"Kubernetes ready {time.monotonic() - start:.0f} s after QEMU started")
        step(f"osctl kubeconfig {node.workdir / 'kubeconfig'} (server rewritten to the forwarded port)")
        for command in (["get", "nodes", "-o", "wide"], ["get", "pods", "-A"]):
            step(f"kubectl {' '.join(command)}")
            print(node.kubectl(*command).stdout, end="")
        print(node.osctl("containers", "-k").stdout, end="")
    print(f"\ntotal {time.monotonic() - start:.1f} s from QEMU start")
    print(f"files: configs and talosconfig in {configs}/, image, manifest and kubectl in {OUT}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
