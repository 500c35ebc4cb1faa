"""`make demo`: generate and validate a cluster's configs, bake the default image, boot it in QEMU."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bakery import qemu
from bakery.errors import BakeError
from bakery.image import BakeOptions, bake

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
        image = bake(BakeOptions(platform="kvm", out=OUT))
    except BakeError as exc:
        print(f"bake failed: {exc}", file=sys.stderr)
        return 1
    print(f"image: {image.raw}\nmanifest: {image.manifest}")

    step(
        f"booting {image.raw} in QEMU ({'KVM' if qemu.kvm_usable() else 'TCG: software emulation'}, SeaBIOS)"
    )
    start = time.monotonic()
    with qemu.start(image.raw, firmware="bios") as vm:
        try:
            match, seconds = vm.wait_for(qemu.BANNER, 300)
        except TimeoutError as exc:
            print(exc, file=sys.stderr)
            return 1
        time.sleep(0.5)
        for line in vm.lines:
            if "[talos]" in line:
                print("    " + line.strip())
    print(f"\nbanner '{match.group(0)}' after {seconds:.1f} s (total {time.monotonic() - start:.1f} s)")
    print(f"\nfiles: configs and talosconfig in {configs}/, image and manifest in {OUT}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
