"""Boot an image in QEMU and watch its serial console: used by the demo, the tests and the bench.

KVM is used only when it really works (CPU flags and a real open of /dev/kvm); otherwise QEMU
runs with software emulation (TCG).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bakery.errors import BakeError
from bakery.tools import which

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BANNER = re.compile(r"talos-os init (\S+) \(platform=(\S+)\)")


def kvm_usable(cpuinfo: Path = Path("/proc/cpuinfo"), device: Path = Path("/dev/kvm")) -> bool:
    """True only when the CPU has vmx/svm and /dev/kvm opens read-write."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE):
        return False
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def accel_args() -> list[str]:
    """-accel kvm when it works, else TCG (multi-threaded)."""
    return (
        ["-accel", "kvm", "-cpu", "host"] if kvm_usable() else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    )


@dataclass
class Boot:
    """A running QEMU whose serial console is collected line by line."""

    argv: list[str]
    proc: subprocess.Popen[bytes]
    started: float
    lines: list[str] = field(default_factory=list)
    workdir: Path | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            buf += chunk
            *complete, buf = buf.split(b"\n")
            with self._cond:
                self.lines.extend(c.decode(errors="replace").rstrip("\r") for c in complete)
                self._cond.notify_all()
        with self._cond:
            if buf:
                self.lines.append(buf.decode(errors="replace"))
            self._cond.notify_all()

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float, since: int = 0
    ) -> tuple[re.Match[str], float]:
        """Wait until a console line (from line ``since`` on) matches; returns it and seconds since start."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = since
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m, time.monotonic() - self.started
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.lines)):
                    tail = "\n".join(self.lines[-25:])
                    why = "QEMU exited" if self.proc.poll() is not None else f"{timeout:.0f} s passed"
                    raise TimeoutError(f"{why} before the console showed {rx.pattern!r}; last lines:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def monitor(self, command: str, timeout: float = 10.0) -> str:
        """Send one human-monitor command (e.g. ``sendkey ctrl-alt-delete``); returns its output."""
        if self.workdir is None:
            raise RuntimeError("this QEMU has no monitor socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.workdir / "monitor.sock"))
            out = b""
            while b"(qemu)" not in out:
                out += s.recv(4096) or b"(qemu)"
            s.sendall(command.encode() + b"\n")
            out = b""
            while b"(qemu)" not in out:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        return out.decode(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit by itself (the guest powered off)."""
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Kill QEMU and clean up."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Boot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    disk: Path | None,
    *,
    firmware: str = "bios",
    memory_mb: int = 1024,
    extra: Sequence[str] = (),
    snapshot: bool = True,
    disk_cache: str | None = None,
    disk_format: str = "raw",
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    reboot: bool = False,
) -> Boot:
    """Start QEMU on ``disk`` (BIOS = SeaBIOS, UEFI = OVMF), serial console on a pipe.

    ``reboot=True`` lets a guest reboot restart it in the same QEMU (else QEMU exits).
    """
    qemu = which("qemu-system-x86_64")
    workdir = Path(tempfile.mkdtemp(prefix="talos-qemu-"))
    argv = [qemu, "-nodefaults", "-nographic", "-m", str(memory_mb), "-smp", "2", *accel_args(),
            "-serial", "stdio", "-device", "virtio-rng-pci",
            "-monitor", f"unix:{workdir / 'monitor.sock'},server=on,wait=off"]  # fmt: skip
    if not reboot:  # a guest reboot ends QEMU, unless the caller wants the guest to come back
        argv.append("-no-reboot")
    if firmware == "uefi":
        if not OVMF_CODE.exists():
            raise BakeError("OVMF firmware is missing: install it with `apt-get install ovmf`")
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        argv += ["-machine", "q35",
                 "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={vars_copy}"]  # fmt: skip
    elif firmware != "bios":
        raise BakeError(f"unknown firmware {firmware!r}: use bios or uefi")
    if disk is not None:
        snap = ",snapshot=on" if snapshot else ""
        cache = f",cache={disk_cache}" if disk_cache else ""
        argv += ["-drive", f"file={disk},format={disk_format},if=virtio{snap}{cache}"]
    if kernel is not None:
        argv += ["-kernel", str(kernel)]
        if initrd is not None:
            argv += ["-initrd", str(initrd)]
        if append is not None:
            argv += ["-append", append]
    argv += list(extra)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    boot = Boot(argv=argv, proc=proc, started=time.monotonic(), workdir=workdir)
    threading.Thread(target=boot._pump, daemon=True).start()
    return boot
