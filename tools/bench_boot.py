"""`make bench`: QEMU start to `osctl version` answered, stage by stage, under SeaBIOS and OVMF.

The image boots as a user boots it: firmware, GRUB from the disk, kernel, stage 1 (initramfs), stage
2 (the init's phases), osd. The machine config comes through QEMU's fw_cfg (the kvm platform's
second source), osd's port is forwarded to loopback, and osctl is asked for its version until it
answers. Every serial line is stamped with the seconds since QEMU started; the stage boundaries are
read from those lines, so a regression shows where it is:

- firmware: until GRUB's first output; loader: GRUB's menu and its reads of the kernel and
  initramfs, then the kernel's own start until its first console line: unpacking itself, and its
  setup before the console starts, which with init_on_free=1 includes zeroing the memory it frees
  early (seconds under TCG). The kernel's timestamps cannot place its start instead: under TCG its
  clock may read 0 until a clocksource is chosen and runs slow while the second CPU comes up;
- kernel: until it runs /init (all of it on the QEMU clock); stage 1: until the squashfs root is
  mounted; switch root: until the init in it is executed;
- stage 2 start: the init's interpreter and imports, until its first phase ends;
- one row per init phase; osd answers: from "node ready" until the node first answers Version
  (asked as osctl asks, from the bench's process every 0.1 s, so the figure carries no CLI start-up
  or polling gaps); the total adds one real ``osctl version`` run against the answering node (its
  own row), as if the operator ran it at that moment.

Figures are medians of several boots; the machine's load average is printed with them because other
jobs on the machine inflate them. ``python -m tools.bench_boot --help`` for a run on its own.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bakery import qemu
from talos_os import talosconfig as talosconfig_file
from talos_os.api.gen import node_pb2 as pb
from talos_os.config.generate import generate
from talos_os.lib import memory
from talos_os.osctl import client
from tools import nodevm

KERNEL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
PHASE_DONE = re.compile(r"\[talos\] phase (.+): done in (\d+) ms")
OSD_START = re.compile(
    r"started ([\d.]+) s after boot, imports ([\d.]+) s, (?:parked ([\d.]+) s, )?serving ([\d.]+) s later"
)
OSD_SPLIT = re.compile(r"serving [\d.]+ s later \(([^)]*)\)")
OSD_STEP = re.compile(r"([^,]+?) ([\d.]+) s(?:, |$)")
READY_PSS = re.compile("init " + memory.DESCRIBED.pattern)


@dataclass
class BootRun:
    """One boot: its stages (seconds, in order), the total and what the node said about memory."""

    firmware: str
    stages: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    init_rss_mib: float | None = None
    osd_rss_mib: float | None = None
    init_pss_mib: float | None = None  # from the ready line: osd may not read PID 1's smaps_rollup
    osd_pss_mib: float | None = None
    osd_start: dict[str, float] = field(default_factory=dict)
    cli_seconds: float | None = None  # the osctl version run itself (host side)


def stages(stamped: Sequence[tuple[float, str]], answered: float) -> dict[str, float]:
    """Stage durations from serial lines stamped with seconds since QEMU start (see the module doc)."""
    marks: list[tuple[str, float]] = []
    grub = next((t for t, line in stamped if "GRUB" in line), None)
    kernel_first = next((t for t, line in stamped if KERNEL_LINE.match(line)), None)
    run_init = next((t for t, line in stamped if KERNEL_LINE.match(line) and "Run /init" in line), None)
    if grub is not None:
        marks.append(("firmware", grub))
    if kernel_first is not None and run_init is not None:
        marks += [("loader" if grub is not None else "firmware + loader", kernel_first), ("kernel", run_init)]
    for name, text in (("stage 1", "switching root"), ("switch root", "stage1: exec")):
        t = next((t for t, line in stamped if text in line), None)
        if t is not None:
            marks.append((name, t))
    first = True
    for t, line in stamped:
        m = PHASE_DONE.search(line)
        if m:
            if first:
                marks.append(("stage 2 start", t - int(m.group(2)) / 1000))
                first = False
            marks.append((f"phase {m.group(1)}", t))
    ready = next((t for t, line in stamped if "node ready:" in line), None)
    if ready is not None:
        marks.append(("until ready", ready))
    marks.append(("osd answers", answered))
    out: dict[str, float] = {}
    last = 0.0
    for name, t in marks:
        out[name] = out.get(name, 0.0) + max(t - last, 0.0)
        last = max(t, last)
    return out


def _stamp(vm: qemu.Boot, stamped: list[tuple[float, str]], stop: threading.Event) -> None:
    """Give each console line the time it arrived (qemu.Boot collects lines without times)."""
    seen = 0
    while not stop.is_set():
        with vm._cond:
            vm._cond.wait(0.2)
            new = vm.lines[seen:]
            seen = len(vm.lines)
        now = time.monotonic() - vm.started
        stamped.extend((now, line) for line in new)


def osd_start(log: str) -> dict[str, float]:
    """osd's start from its "serving the node API" line: imports, parked, serving, and serving's
    steps (config, identity, listen) as ``osd: <step>``."""
    m = OSD_START.search(log)
    if not m:
        return {}
    got = {"started": float(m[1]), "imports": float(m[2]), "serving": float(m[4])}
    if m[3] is not None:
        got["parked"] = float(m[3])
    split = OSD_SPLIT.search(log)
    if split:
        got |= {f"osd: {name}": float(sec) for name, sec in OSD_STEP.findall(split[1])}
    return got


def _vm_rss(talosconfig: Path, endpoint: str, pid: object) -> float | None:
    status = nodevm.osctl(talosconfig, endpoint, "read", f"/proc/{pid}/status").stdout
    m = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else None


def _vm_pss(talosconfig: Path, endpoint: str, pid: object) -> float | None:
    """osd's PSS, read by osd itself (a process may read its own smaps_rollup)."""
    text = nodevm.osctl(talosconfig, endpoint, "read", f"/proc/{pid}/smaps_rollup").stdout
    try:
        return memory.parse(text).pss_kib / 1024
    except ValueError:
        return None


def _sum(*values: float | None) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def first_version_answer(
    talosconfig: Path, endpoint: str, deadline: float, every: float = 0.1
) -> float | None:
    """When (monotonic) the node first answered Version over mutual TLS, asked as osctl asks it but
    from this process every ``every`` s: polling with the CLI would add its start-up (~0.5 s) and the
    gaps between runs to the figure."""
    ctx = talosconfig_file.load(talosconfig).current()
    creds = client.Credentials.from_context(ctx)
    target = client.parse_target(endpoint)
    while time.monotonic() < deadline:
        ch = client.channel(target, creds)
        try:
            client.stub(ch).Version(pb.Empty(), timeout=5)
            return time.monotonic()
        except grpc.RpcError:
            time.sleep(every)
        finally:
            ch.close()
    return None


def timed_osctl_version(talosconfig: Path, endpoint: str) -> float:
    """Seconds the real ``osctl version`` takes against the answering node: the headline figure is
    the node's first answer plus this, as if the operator ran osctl at that moment."""
    began = time.monotonic()
    result = nodevm.osctl(talosconfig, endpoint, "version", timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"osctl version failed against a node that answered Version: {result.stderr}")
    return time.monotonic() - began


def boot_once(
    raw: Path,
    firmware: str,
    config: str,
    talosconfig: Path,
    memory_mb: int = 1024,
    console: Path | None = None,
) -> BootRun:
    """Boot ``raw`` from its disk with ``config`` over fw_cfg; time every stage until osctl version answers.
    With ``console``, the stamped serial lines are written there (what the stage table was read from)."""
    run = BootRun(firmware)
    port = nodevm.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(config)
        extra = [*nodevm.user_net(hostfwd={port: 50000}), "-fw_cfg", f"name=opt/talos/config,file={cfg}"]
        stamped: list[tuple[float, str]] = []
        stop = threading.Event()
        with qemu.start(raw, firmware=firmware, memory_mb=memory_mb, extra=extra) as vm:
            threading.Thread(target=_stamp, args=(vm, stamped, stop), daemon=True).start()
            endpoint = f"127.0.0.1:{port}"
            vm.wait_for(r"\[talos\] services: ", 900)  # osd cannot answer before its service starts
            node_answered = first_version_answer(talosconfig, endpoint, time.monotonic() + 600)
            if node_answered is None:
                raise TimeoutError(f"the node never answered Version; console tail:\n{vm.output[-3000:]}")
            answered = node_answered - vm.started  # on the QEMU clock, like the serial lines
            run.cli_seconds = timed_osctl_version(talosconfig, endpoint)
            vm.wait_for("node ready", 120)
            time.sleep(0.5)  # the stamping thread catches up
            stop.set()
            run.stages = stages(stamped, answered)
            if console is not None:
                console.write_text("".join(f"{t:8.2f} {line}\n" for t, line in stamped))
            run.total = answered + run.cli_seconds
            services = json.loads(
                nodevm.osctl(talosconfig, endpoint, "services", "-o", "json").stdout or "[]"
            )
            pids = {s["id"]: s["pid"] for s in services}
            run.init_rss_mib = _vm_rss(talosconfig, endpoint, 1)
            ready_pss = next((m for _, line in stamped if (m := READY_PSS.search(line))), None)
            run.init_pss_mib = int(ready_pss.group(1)) / 1024 if ready_pss else None
            if "osd" in pids:
                run.osd_rss_mib = _vm_rss(talosconfig, endpoint, pids["osd"])
                run.osd_pss_mib = _vm_pss(talosconfig, endpoint, pids["osd"])
            run.osd_start = osd_start(nodevm.osctl(talosconfig, endpoint, "logs", "osd").stdout)
    return run


def _median(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(runs: dict[str, list[BootRun]]) -> list[str]:
    """One row per stage, one column per firmware (medians), then the total and memory."""
    names: list[str] = []
    for boots in runs.values():
        for b in boots:
            names += [n for n in b.stages if n not in names]
    cols = list(runs)
    lines = [f"  {'stage (s, median)':<28}" + "".join(f"{c:>9}" for c in cols)]
    for name in names:
        lines.append(
            f"  {name:<28}"
            + "".join(f"{_fmt(_median([b.stages.get(name) for b in runs[c]])):>9}" for c in cols)
        )
    lines.append(
        f"  {'QEMU start -> osctl version':<28}"
        + "".join(f"{_fmt(_median([b.total for b in runs[c]])):>9}" for c in cols)
    )
    splits: list[str] = []
    for boots in runs.values():
        for b in boots:
            splits += [k for k in b.osd_start if k.startswith("osd: ") and k not in splits]
    rows: list[tuple[str, Callable[[BootRun], float | None]]] = [
        ("osd imports", lambda b: b.osd_start.get("imports")),
        ("osd parked (init not ready)", lambda b: b.osd_start.get("parked")),
        ("osd start after imports", lambda b: b.osd_start.get("serving")),
        *((f"  {k.removeprefix('osd: ')}", lambda b, k=k: b.osd_start.get(k)) for k in splits),
        ("osctl version itself (host)", lambda b: b.cli_seconds),
        ("init RSS (MiB)", lambda b: b.init_rss_mib),
        ("osd RSS (MiB)", lambda b: b.osd_rss_mib),
        ("init + osd RSS (MiB)", lambda b: _sum(b.init_rss_mib, b.osd_rss_mib)),
        ("init PSS at ready (MiB)", lambda b: b.init_pss_mib),
        ("osd PSS (MiB)", lambda b: b.osd_pss_mib),
        ("init + osd PSS (MiB)", lambda b: _sum(b.init_pss_mib, b.osd_pss_mib)),
    ]
    for label, get in rows:
        lines.append(
            f"  {label:<28}" + "".join(f"{_fmt(_median([get(b) for b in runs[c]])):>9}" for c in cols)
        )
    return lines


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def report(
    raw: Path,
    boots: int = 3,
    firmwares: Sequence[str] = ("bios", "uefi"),
    check_512: bool = True,
    consoles: Path | None = None,
) -> None:
    """Boot ``boots`` times per firmware; print the stage table, totals per boot, and the 512 MiB check."""
    generated = generate("bench", "https://10.5.0.2:6443")
    config = nodevm.with_hostname(generated.controlplane, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        talosconfig = Path(tmp) / "talosconfig"
        talosconfig.write_text(generated.talosconfig)
        runs: dict[str, list[BootRun]] = {fw: [] for fw in firmwares}
        loads = [loadavg()]
        for n in range(boots):  # interleaved, so a change in the machine's load hits both alike
            for fw in firmwares:
                console = consoles / f"{fw}-{n + 1}.log" if consoles is not None else None
                runs[fw].append(boot_once(raw, fw, config, talosconfig, console=console))
                loads.append(loadavg())
        print(f"boot stages (TCG, {boots} boots per firmware, 1024 MiB, from the disk through the firmware and "
              f"GRUB; load average during the runs: {', '.join(loads)}):")  # fmt: skip
        for line in table(runs):
            print(line)
        for fw, got in runs.items():
            print(f"  {fw} totals: {', '.join(f'{b.total:.1f}' for b in got)} s")
        if check_512:
            try:
                small = boot_once(raw, firmwares[0], config, talosconfig, memory_mb=512)
                print(f"  512 MiB ({firmwares[0]}): osctl version answered after {small.total:.1f} s; init RSS "
                      f"{_fmt(small.init_rss_mib)} MiB, osd RSS {_fmt(small.osd_rss_mib)} MiB")  # fmt: skip
            except (TimeoutError, RuntimeError) as exc:
                print(f"  512 MiB ({firmwares[0]}): FAILED: {str(exc)[-1500:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_boot", description=__doc__.split("\n\n")[0])
    p.add_argument("image", type=Path, help="a baked raw image (talos-bake raw --platform kvm)")
    p.add_argument("--boots", type=int, default=3, help="boots per firmware [%(default)s]")
    p.add_argument("--firmware", default="bios,uefi", help="comma-separated: bios, uefi [%(default)s]")
    p.add_argument("--no-512", action="store_true", help="skip the boot with 512 MiB of RAM")
    p.add_argument("--consoles", type=Path, help="write each boot's stamped serial console in this directory")
    args = p.parse_args(argv)
    if not args.image.is_file():
        p.error(f"{args.image} is not a file: bake one with talos-bake raw --platform kvm --out DIR")
    if args.consoles is not None:
        args.consoles.mkdir(parents=True, exist_ok=True)
    firmwares = [f for f in args.firmware.split(",") if f]
    report(args.image, args.boots, firmwares, check_512=not args.no_512, consoles=args.consoles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
