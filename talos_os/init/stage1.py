"""Stage 1: runs from the initramfs as PID 1 and moves into the read-only squashfs root.

It mounts the kernel filesystems, loads the kernel modules the bakery put in the initramfs
(dependency order, ``finit_module``), finds the root partition by its GPT label, mounts it
read-only, frees the initramfs and executes ``/sbin/init`` (stage 2) inside the new root.
Standard library only: the initramfs carries no third-party packages.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from talos_os.init import cmdline as kernel_cmdline
from talos_os.init import syscalls
from talos_os.kmod import ModuleIndex

NEWROOT = "/sysroot"
MODULE_LIST = "/etc/talos/modules"  # written by the bakery: one module name per line, in load order
DEFAULT_ROOT_LABEL = "ROOT-A"
ROOT_WAIT_SECONDS = 60.0

_T0 = time.monotonic()


def log(message: str) -> None:
    """Stage 1 writes to the console only: the kernel log is not ready for us yet."""
    sys.stdout.write(f"[talos] [{time.monotonic() - _T0:6.3f}] stage1: {message}\n")
    sys.stdout.flush()


def mount_kernel_filesystems() -> None:
    """devtmpfs, proc and sysfs: everything after this needs them."""
    for source, target, fstype, flags in (
        ("devtmpfs", "/dev", "devtmpfs", syscalls.MS_NOSUID),
        ("proc", "/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC),
        ("sysfs", "/sys", "sysfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC),
    ):
        os.makedirs(target, exist_ok=True)
        try:
            syscalls.mount(source, target, fstype, flags)
        except OSError as exc:
            if exc.errno != 16:  # EBUSY: already mounted (devtmpfs automount)
                raise


def load_modules(moddir: Path, names: list[str]) -> int:
    """Load ``names`` and their dependencies; returns how many were newly loaded."""
    index = ModuleIndex.load(moddir)
    loaded = 0
    for name in index.closure(n for n in names if index.has(n)):
        try:
            if syscalls.finit_module(str(moddir / index.paths[name])):
                loaded += 1
        except OSError as exc:
            if exc.errno == 19:  # ENODEV: no such hardware; harmless for a driver
                continue
            log(f"module {name}: {exc.strerror}")
    return loaded


def find_partition(label: str, sys_block: Path = Path("/sys/class/block")) -> str | None:
    """The /dev path of the partition whose GPT name is ``label``, from sysfs uevents."""
    if not sys_block.is_dir():
        return None
    for entry in sorted(sys_block.iterdir()):
        try:
            uevent = (entry / "uevent").read_text()
        except OSError:
            continue
        fields = dict(line.partition("=")[::2] for line in uevent.splitlines())
        if fields.get("PARTNAME") == label and fields.get("DEVNAME"):
            return "/dev/" + fields["DEVNAME"]
    return None


def wait_for(
    probe: Callable[[], str | None], timeout: float, what: str, sleep: Callable[[float], None] = time.sleep
) -> str:
    """Poll ``probe`` until it answers, saying what it waits for every few seconds."""
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 3.0
    while True:
        found = probe()
        if found:
            return found
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"no {what} appeared within {timeout:.0f} s")
        if now >= next_note:
            log(f"still waiting for {what}")
            next_note = now + 5.0
        sleep(0.05)


def free_initramfs(root: str = "/", keep: str = NEWROOT) -> None:
    """Delete the initramfs' files (it is RAM) without crossing into other mounts."""
    root_dev = os.lstat(root).st_dev
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        if dirpath.startswith(keep) or os.lstat(dirpath).st_dev != root_dev:
            continue
        for name in filenames:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if path == keep or os.path.ismount(path):
                continue
            with contextlib.suppress(OSError):
                os.rmdir(path)


def switch_root(newroot: str = NEWROOT, init: str = "/sbin/init") -> None:
    """Move the kernel filesystems into ``newroot``, make it ``/`` and exec its init."""
    for mnt in ("/dev", "/proc", "/sys"):
        syscalls.mount(mnt, newroot + mnt, None, syscalls.MS_MOVE)
    free_initramfs()
    os.chdir(newroot)
    syscalls.mount(newroot, "/", None, syscalls.MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    sys.stdout.flush()
    os.execv(init, [init])


def main() -> None:
    """Stage 1 entry point (``/init`` in the initramfs)."""
    try:
        mount_kernel_filesystems()
        cmdline = kernel_cmdline.read()
        release = os.uname().release
        moddir = Path("/lib/modules") / release
        names = Path(MODULE_LIST).read_text().split() if Path(MODULE_LIST).exists() else []
        count = load_modules(moddir, names) if moddir.is_dir() else 0
        log(f"kernel {release}: loaded {count} modules")
        label = cmdline.get("talos.root") or DEFAULT_ROOT_LABEL
        device = wait_for(lambda: find_partition(label), ROOT_WAIT_SECONDS, f"partition labelled {label}")
        os.makedirs(NEWROOT, exist_ok=True)
        syscalls.mount(device, NEWROOT, "squashfs", syscalls.MS_RDONLY | syscalls.MS_NODEV)
        log(f"root {label} ({device}) mounted read-only; switching root")
        switch_root()
    except BaseException as exc:  # PID 1 must never exit: say why, then restart the machine
        log(f"FATAL: {exc!r}; rebooting in 30 s")
        time.sleep(30)
        try:
            syscalls.reboot(syscalls.LINUX_REBOOT_CMD_RESTART)
        finally:
            while True:
                time.sleep(3600)
