"""Where stage 2's imports go on a node: one boot with ``talos.importtime=1``, the slowest imports.

``make bench`` says how long stage 2 takes to start; this says why. The image boots straight into
its kernel and initramfs (the firmware and GRUB are not what is measured here) with the machine
config over fw_cfg; the init then runs under ``python3 -X importtime`` and every import's time, as
the node's CPU pays it under emulation, comes out on the console. Printed: the total, the
packages that cost most (cumulative, first level) and the modules that cost most on their own.

    python -m tools.boot_imports _out/kvm/talos-kvm.raw.manifest.json [--top 25]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from talos_os.config.generate import generate
from tools import nodevm

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


@dataclass(frozen=True)
class Import:
    """One ``-X importtime`` line: microseconds on its own and with what it imported."""

    name: str
    self_us: int
    cumulative_us: int
    depth: int


def parse(lines: Iterable[str]) -> list[Import]:
    """The ``import time:`` lines among console lines (the header line has no numbers and is skipped)."""
    found = []
    for line in lines:
        m = IMPORT_LINE.search(line)
        if m:
            found.append(Import(m[4], int(m[1]), int(m[2]), len(m[3]) // 2))
    return found


def summary(imports: list[Import], top: int = 25) -> list[str]:
    """The total, the costliest top-level imports (cumulative) and the costliest modules (self)."""
    roots = [i for i in imports if i.depth == 0]
    total = sum(i.cumulative_us for i in roots)
    out = [f"stage 2 imports: {total / 1e6:.2f} s in {len(imports)} modules"]
    out.append("  by package (cumulative, first level):")
    firsts = [i for i in imports if i.depth <= 1]
    for i in sorted(firsts, key=lambda i: -i.cumulative_us)[:top]:
        out.append(f"    {i.cumulative_us / 1e6:7.2f} s  {i.name}")
    out.append("  by module (its own time):")
    for i in sorted(imports, key=lambda i: -i.self_us)[:top]:
        out.append(f"    {i.self_us / 1e6:7.2f} s  {i.name}")
    return out


def boot_imports(manifest: Path, timeout: float = 900) -> list[Import]:
    """Boot the image once with ``talos.importtime=1`` and return stage 2's imports."""
    image = nodevm.NodeImage.from_manifest(manifest)
    config = nodevm.with_hostname(generate("imports", "https://10.5.0.2:6443").controlplane, "imports")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(config)
        extra = ["-fw_cfg", f"name=opt/talos/config,file={cfg}"]
        net = nodevm.user_net()
        with nodevm.boot_node(image, platform="kvm", net=net, extra=extra, append="talos.importtime=1") as vm:
            print("booting with talos.importtime=1 ...", file=sys.stderr, flush=True)
            vm.wait_for("node ready", timeout)
            return parse(vm.lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.boot_imports", description=__doc__.split("\n")[0])
    p.add_argument("manifest", type=Path, help="a bake's talos-<platform>.raw.manifest.json")
    p.add_argument("--top", type=int, default=25, help="rows per list [%(default)s]")
    args = p.parse_args(argv)
    if not args.manifest.is_file():
        print(f"boot_imports: {args.manifest} does not exist: bake an image first (make bench bakes one)")
        return 2
    imports = boot_imports(args.manifest)
    if not imports:
        print("boot_imports: the console showed no import times: is this image older than talos.importtime=?")
        return 1
    print("\n".join(summary(imports, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
