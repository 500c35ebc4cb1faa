"""`make demo`: generate a cluster's configs, bake the default image, boot a node with its config in
QEMU, then ask it `osctl version` and `osctl services` over mutual TLS."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bakery import qemu
from bakery.errors import BakeError
from bakery.image import BakeOptions, bake
from bakery.lockguard import guarded
from tools import nodevm

OUT = Path("_out")
BIN = Path(sys.executable).parent


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def main() -> int:
    configs = OUT / "demo"
    step(f"osctl config generate demo https://10.5.0.2:6443 -o {configs}")
    subprocess.run([BIN / "osctl", "config", "generate", "demo", "https://10.5.0.2:6443", "-o", configs, "--force"],
                   check=True)  # fmt: skip
    for name in ("init.yaml", "controlplane.yaml", "worker.yaml"):
        step(f"osctl config validate {configs / name} --mode metal")
        subprocess.run([BIN / "osctl", "config", "validate", configs / name, "--mode", "metal"], check=True)

    step("talos-bake raw --platform kvm (default image)")
    try:
        image, _moved = guarded(bake, BakeOptions(platform="kvm", out=OUT), update_lock=False, say=print)
    except BakeError as exc:
        print(f"bake failed: {exc}", file=sys.stderr)
        return 1
    print(f"image: {image.raw}\nmanifest: {image.manifest}")

    cp_config = nodevm.with_hostname((configs / "controlplane.yaml").read_text(), "demo-cp")
    node_image = nodevm.NodeImage.from_manifest(image.manifest)
    accel = "KVM" if qemu.kvm_usable() else "TCG: software emulation"
    step(f"booting the node in QEMU ({accel}); its config comes from a loopback HTTP server (talos.config=)")
    start = time.monotonic()
    with nodevm.served_node(node_image, cp_config) as node:
        vm, endpoint = node.vm, node.endpoint
        try:
            _m, banner_s = vm.wait_for(qemu.BANNER, 600)
            hostname, ready_s = nodevm.wait_ready(vm, 600)
        except TimeoutError as exc:
            print(exc, file=sys.stderr)
            return 1
        for line in vm.lines:
            if "[talos]" in line:
                print("    " + line.strip())
        print(f"\nbanner after {banner_s:.1f} s, node {hostname} ready after {ready_s:.1f} s")
        step(f"waiting for the node API (osd, mutual TLS) on {endpoint}")
        try:
            api_s = nodevm.wait_api(configs / "talosconfig", endpoint)
        except TimeoutError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"osd answered {api_s:.1f} s after the node was ready")
        for command in (["version"], ["services"]):
            step(f"osctl --talosconfig {configs / 'talosconfig'} -e {endpoint} {' '.join(command)}")
            result = nodevm.osctl(configs / "talosconfig", endpoint, *command)
            print(result.stdout + result.stderr, end="")
            if result.returncode != 0:
                return 1
    print(f"\ntotal boot-to-answer {time.monotonic() - start:.1f} s")
    print(f"files: configs and talosconfig in {configs}/, image and manifest in {OUT}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
