"""Stage 2: the init (PID 1) inside the read-only squashfs root.

The boot sequence is the ``PHASES`` list below, run in order; each phase is logged on the
console and the kernel log with a ``[talos]`` prefix and its duration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from talos_os import __version__
from talos_os.init import syscalls
from talos_os.init.cmdline import Cmdline, read
from talos_os.init.hardening import KSPP_SYSCTLS, missing_kspp, write_sysctls


class BootError(RuntimeError):
    """A condition the node cannot boot past; the message says what and how to fix it."""


class Console:
    """Writes ``[talos]`` lines to the console and the kernel log."""

    def __init__(self, console: str = "/dev/console", kmsg: str = "/dev/kmsg") -> None:
        self._paths = (console, kmsg)
        self._files: list[TextIO | None] | None = None

    def _open(self) -> list[TextIO | None]:
        """Open both once, on first use: nothing is writable before the early mounts."""
        if self._files is None:
            files: list[TextIO | None] = []
            for path in self._paths:
                try:
                    files.append(open(path, "w", buffering=1))  # noqa: SIM115 - kept open for the node's life
                except OSError:
                    files.append(None)
            self._files = files
        return self._files

    def log(self, message: str) -> None:
        line = f"[talos] {message}"
        console, kmsg = self._open()
        for f, text in ((console, line + "\n"), (kmsg, f"<6>{line}\n")):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.write(text)


@dataclass
class Boot:
    """State the phases share: the kernel command line and what each phase found."""

    cmdline: Cmdline = field(default_factory=Cmdline)
    console: Console = field(default_factory=Console)
    platform: str = "unknown"
    durations: dict[str, float] = field(default_factory=dict)


def phase_early_mounts(boot: Boot) -> None:
    """tmpfs on /run and /tmp, cgroup2; /dev, /proc and /sys came from stage 1."""
    mounts = (
        ("tmpfs", "/run", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", syscalls.MS_NOSUID | syscalls.MS_NODEV, None),
    )
    for source, target, fstype, flags, data in mounts:
        if not os.path.ismount(target):
            syscalls.mount(source, target, fstype, flags, data)
    boot.cmdline = read()
    # Keep info-level kernel-log lines off the console: our own lines go there directly.
    Path("/proc/sys/kernel/printk").write_text("4 4 1 7")


def phase_hardening(boot: Boot) -> None:
    """Refuse to run without the KSPP kernel parameters; apply the KSPP sysctls."""
    missing = missing_kspp(boot.cmdline)
    if missing:
        raise BootError(
            "the kernel command line lacks the KSPP parameters "
            f"{' '.join(missing)}: add them to the boot loader entry (talos-bake writes them)"
        )
    absent = write_sysctls(KSPP_SYSCTLS)
    if absent:
        boot.console.log(f"hardening: this kernel has no {', '.join(absent)}")
    syscalls.reboot(syscalls.LINUX_REBOOT_CMD_CAD_OFF)  # Ctrl-Alt-Del becomes SIGINT for us


def phase_platform(boot: Boot) -> None:
    """Which platform this node runs on: the bakery writes talos.platform=NAME."""
    boot.platform = boot.cmdline.get("talos.platform") or "unknown"


PHASES: list[tuple[str, Callable[[Boot], None]]] = [
    ("early mounts", phase_early_mounts),
    ("hardening", phase_hardening),
    ("platform", phase_platform),
]


def run_phases(boot: Boot, phases: list[tuple[str, Callable[[Boot], None]]]) -> None:
    """Run each phase in order, logging its name and duration."""
    for name, phase in phases:
        start = time.monotonic()
        phase(boot)
        boot.durations[name] = time.monotonic() - start
        boot.console.log(f"phase {name}: done in {boot.durations[name] * 1000:.0f} ms")


def reap_children() -> None:
    """PID 1 inherits every orphan: collect all exited children."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def power_off(boot: Boot, reboot: bool = False) -> None:
    """Sync and power off (or restart)."""
    boot.console.log("rebooting" if reboot else "powering off")
    os.sync()
    syscalls.reboot(syscalls.LINUX_REBOOT_CMD_RESTART if reboot else syscalls.LINUX_REBOOT_CMD_POWER_OFF)


def idle(boot: Boot) -> None:
    """Stay up as PID 1: reap children, turn Ctrl-Alt-Del into a reboot."""
    requested: list[str] = []
    signal.signal(signal.SIGINT, lambda *_: requested.append("reboot"))
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while not requested:
        reap_children()
        signal.pause()
    power_off(boot, reboot=True)


def main() -> None:
    """Stage 2 entry point (``/sbin/init`` in the squashfs root)."""
    boot = Boot()
    try:
        run_phases(boot, PHASES)
        boot.console.log(f"talos-os init {__version__} (platform={boot.platform})")
        if boot.cmdline.get("talos.test") == "poweroff":
            power_off(boot)
        idle(boot)
    except BaseException as exc:  # PID 1 never exits: explain, wait, restart
        boot.console.log(f"FATAL: {exc}")
        boot.console.log("rebooting in 60 s")
        time.sleep(60)
        try:
            power_off(boot, reboot=True)
        finally:
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
