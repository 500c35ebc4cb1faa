"""Upgrade figures for `make bench`: the bundle's size, the time to write a slot, and the time from
`osctl upgrade` to the node answering on the new version, under TCG through SeaBIOS and GRUB.

Run alone with ``python -m tools.bench_upgrade`` (it bakes the image and a second version's bundle,
with the step cache that makes the second bake cheap).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bakery.image import BakeOptions, BakeResult, bake
from bakery.lockguard import guarded
from talos_os import __version__
from talos_os.config.generate import generate
from tools import bench_bake
from tools.nodevm import copy_disk, free_port, with_hostname
from tools.upgradevm import BOOT_TIMEOUT, Files, Node

OUT = Path("_build/bench-upgrade")
NEXT = f"{__version__}.1-bench"


def next_bundle(out: Path) -> Path:
    os.environ["TALOS_VERSION"] = NEXT
    try:
        bake_bundle = functools.partial(bake, formats=("upgrade",))
        result, _moved = guarded(
            bake_bundle, BakeOptions(platform="kvm", out=out, quiet=True), update_lock=False, say=print
        )
    finally:
        del os.environ["TALOS_VERSION"]
    return result.converted["upgrade"]


def report(image: BakeResult | None = None) -> None:
    if image is None:
        image = bench_bake.release_image(OUT / "image")
    started = time.monotonic()
    bundle = next_bundle(OUT / "next")
    print(
        f"upgrade bundle: {bundle.stat().st_size / 2**20:.1f} MiB (a second version baked in {time.monotonic() - started:.0f} s)"
    )
    generated = generate("bench", "https://10.5.0.2:6443")
    with tempfile.TemporaryDirectory(prefix="talos-bench-upgrade-") as tmp:
        work = Path(tmp)
        config, talosconfig = work / "config.yaml", work / "talosconfig"
        config.write_text(with_hostname(generated.controlplane, "bench-up"))
        talosconfig.write_text(generated.talosconfig)
        files = Files()
        node = Node(copy_disk(image.raw, work / "disk.raw"), "bios", config, talosconfig, files, free_port())
        try:
            node.start()
            node.wait_up(0)
            url = files.url("next.upgrade", bundle)
            exe = Path(sys.executable).with_name("osctl")
            argv = [
                str(exe),
                "--talosconfig",
                str(talosconfig),
                "-e",
                node.endpoint,
                "upgrade",
                "--image",
                url,
            ]
            t0 = time.monotonic()
            marks: dict[str, float] = {}
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proc.stderr is not None
            for line in proc.stderr:
                for phase in ("downloading", "verifying", "writing root", "checking root", "writing vmlinuz"):
                    if f": {phase}" in line and phase not in marks:
                        marks[phase] = time.monotonic() - t0
            proc.wait(BOOT_TIMEOUT)
            done = time.monotonic() - t0
            while node.version_tag() != NEXT:
                if time.monotonic() - t0 > BOOT_TIMEOUT:
                    raise TimeoutError(f"the node did not answer on {NEXT} within {BOOT_TIMEOUT} s")
                time.sleep(2)
            answered = time.monotonic() - t0
        finally:
            if node.vm is not None:
                node.vm.stop()
            files.close()
    write = marks.get("checking root", 0) - marks.get("writing root", 0)
    print(
        f"upgrade (TCG, bios): download {marks.get('verifying', 0) - marks.get('downloading', 0):.1f} s, "
        f"verify {marks.get('writing root', 0) - marks.get('verifying', 0):.1f} s, "
        f"write the root slot {write:.1f} s, check it {marks.get('writing vmlinuz', 0) - marks.get('checking root', 0):.1f} s; "
        f"osctl upgrade returned after {done:.1f} s; node answering on {NEXT} {answered:.1f} s after osctl upgrade"
    )


if __name__ == "__main__":
    report()
