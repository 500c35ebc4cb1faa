"""`make bench`: the figures behind the performance targets (bake time, sizes, boot time)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import tools.bench_boot as bench_boot
from bakery import qemu
from bakery.image import to_qcow2
from tools import bench_aws, bench_bake, bench_cluster, bench_kubernetes, bench_node, bench_osd, bench_upgrade

OUT = Path("_build/bench")


def main() -> int:
    bench_bake.report(OUT)
    start = time.monotonic()
    image = bench_bake.release_image(OUT)
    bake_s = time.monotonic() - start
    qcow = to_qcow2(image.raw, OUT / "talos-kvm.qcow2")
    m = json.loads(image.manifest.read_text())
    print(f"bake (warm cache if run before): {bake_s:.1f} s; steps: {m['timings_seconds']}")
    print(
        f"raw image: {m['size_apparent'] >> 20} MiB apparent, {m['size_allocated'] / 2**20:.1f} MiB allocated"
    )
    print(f"qcow2: {qcow.stat().st_size / 2**20:.1f} MiB")
    print(
        f"squashfs: {m['squashfs_bytes'] / 2**20:.1f} MiB; initramfs: {m['initramfs_bytes'] / 2**20:.1f} MiB"
    )
    for k, v in m["rootfs_component_bytes"].items():
        print(f"  rootfs {k}: {v / 2**20:.1f} MiB (uncompressed)")
    for k, v in m["initramfs_component_bytes"].items():
        print(f"  initramfs {k}: {v / 2**20:.1f} MiB (uncompressed)")
    bench_aws.report(image.raw)
    bench_osd.report()
    accel = "KVM" if qemu.kvm_usable() else "TCG"
    for firmware in ("bios", "uefi"):
        with qemu.start(image.raw, firmware=firmware) as vm:
            _m, seconds = vm.wait_for(qemu.BANNER, 300)
            stage1 = next((ln for ln in vm.lines if "stage1: root" in ln), "")
        print(f"boot to banner ({accel}, {firmware}): {seconds:.1f} s from QEMU start  [{stage1.strip()}]")
    bench_boot.report(image.raw)  # QEMU start to osctl version, stage by stage, SeaBIOS and OVMF
    bench_node.report_node(image)
    bench_upgrade.report(image)
    bench_node.report_libvirt(image)
    bench_kubernetes.report_sizes(image)
    bench_kubernetes.report_build(json.loads(image.manifest.read_text())["source_date_epoch"])
    bench_kubernetes.report_node(image)
    bench_cluster.report(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
