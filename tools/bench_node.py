"""`make bench` figures for a configured node: boot phases under TCG, init and osd memory, and the
boot of a libvirt domain defined by `talos-bake kvm`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bakery import qemu
from bakery.image import BakeResult
from talos_os.config.generate import generate
from tools import nodevm

BIN = Path(sys.executable).parent


def report_node(image: BakeResult) -> None:
    """Boot a node with a config; print per-phase times, init RSS, time to API and osd memory."""
    generated = generate("bench", "https://10.5.0.2:6443")
    config = nodevm.with_hostname(generated.controlplane, "bench")
    node = nodevm.NodeImage.from_manifest(image.manifest)
    with tempfile.TemporaryDirectory() as tmp, nodevm.served_node(node, config) as served:
        vm, endpoint = served.vm, served.endpoint
        talosconfig = Path(tmp) / "talosconfig"
        talosconfig.write_text(generated.talosconfig)
        _m, banner_s = vm.wait_for(qemu.BANNER, 600)
        _host, ready_s = nodevm.wait_ready(vm, 600)
        ready = next(line for line in vm.lines if "node ready" in line)
        api_s = nodevm.wait_api(talosconfig, endpoint)
        stats = nodevm.osctl(talosconfig, endpoint, "stats").stdout
        pids = {
            s["id"]: s["pid"]
            for s in json.loads(nodevm.osctl(talosconfig, endpoint, "services", "-o", "json").stdout)
        }
        osd_status = nodevm.osctl(
            talosconfig, endpoint, "read", f"/proc/{pids.get('osd', 'self')}/status"
        ).stdout
        phases = nodevm.phase_times(vm.lines)
    print(f"node boot (TCG, direct kernel boot, 1 GiB): banner {banner_s:.1f} s, ready {ready_s:.1f} s "
          f"after QEMU start; osd answered {api_s:.1f} s later")  # fmt: skip
    print(
        "  init phases: " + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in phases.items())
    )
    rss = re.search(r"init resident memory (\d+) KiB", ready)
    print(
        f"  init (PID 1) resident memory once up: {int(rss.group(1)) / 1024:.1f} MiB"
        if rss
        else "  init RSS: ?"
    )
    print("  services (osctl stats, from cgroups):")
    for line in stats.splitlines():
        print(f"    {line}")
    osd_rss = re.search(r"VmRSS:\s+(\d+) kB", osd_status)
    print(f"  osd resident memory (osctl read /proc/<pid>/status): {int(osd_rss.group(1)) / 1024:.1f} MiB"
          if osd_rss else f"  osd RSS: unknown ({osd_status[:200]!r})")  # fmt: skip


def report_libvirt(image: BakeResult) -> None:
    """Define and start a domain with `talos-bake kvm --define --start`; time to the banner on its log."""
    from platforms.kvm import publish
    from tools.libvirtd import ensure_running

    ensure_running()
    work = image.raw.parent / "libvirt-bench"
    work.mkdir(exist_ok=True)
    log = work / "serial.log"
    log.unlink(missing_ok=True)
    name = "talos-bench"
    conn = publish.connect("qemu:///system")
    try:
        publish.remove(conn, name)
        started = time.monotonic()
        subprocess.run(
            [str(BIN / "talos-bake"), "kvm", "--image", str(image.raw), "--out", str(work), "--name", name,
             "--firmware", "bios", "--network", "user", "--serial-log", str(log), "--define", "--start"],
            check=True, capture_output=True,
        )  # fmt: skip
        while time.monotonic() - started < 600:
            if log.exists() and qemu.BANNER.search(log.read_text(errors="replace")):
                print(f"libvirt domain (talos-bake kvm --define --start, BIOS): banner after "
                      f"{time.monotonic() - started:.1f} s")  # fmt: skip
                break
            time.sleep(0.5)
        else:
            print("libvirt domain: no banner within 600 s")
    finally:
        publish.remove(conn, name)
        conn.close()
