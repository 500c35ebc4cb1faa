"""Stage 1: runs from the initramfs as PID 1 and moves into the read-only squashfs root.

It mounts the kernel filesystems, loads the kernel modules the bakery put in the initramfs
(dependency order, ``finit_module``), finds the root, mounts it read-only, frees the initramfs
and executes ``/sbin/init`` (stage 2) inside the new root. ``talos.root=`` says where the root is:

- ``talos.root=ROOT-A``: the squashfs partition whose GPT name is ROOT-A (installed disks);
- ``talos.root=iso:LABEL/path/root.sqsh``: the squashfs file at that path on the iso9660 volume
  whose volume identifier is LABEL (a live ISO), mounted through a loop device.

Standard library only: the initramfs carries no third-party packages.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from talos_os.init import loopdev, syscalls
from talos_os.kmod import ModuleIndex, canonical
from talos_os.lib import cmdline as kernel_cmdline
from talos_os.lib.fslabel import probe_label

NEWROOT = "/sysroot"
MODULE_LIST = "/etc/talos/modules"  # written by the bakery: one module name per line, in load order
LATE_MODULE_LIST = "/etc/talos/modules.late"  # boot modules that do not find the root: loaded from it
PLATFORM_MODULES = "/etc/talos/modules.platforms"  # written by the bakery: "platform: module ..." lines
LATE_MODULES_ENV = "TALOS_LATE_MODULES"  # tells stage 2 which modules the background loader loads
# glibc gives each thread that allocates its own arena (the init runs several threads: reaper,
# control socket, network, upgrade watch); two arenas hold the init's memory ~3 MiB lower (RSS at
# ready, measured under TCG), and its threads rarely allocate at once.
INIT_ENV = {"MALLOC_ARENA_MAX": "2"}
DEFAULT_ROOT_LABEL = "ROOT-A"
ROOT_WAIT_SECONDS = 60.0
ISO_PREFIX = "iso:"
ISO_MOUNT = "/run/talos-iso"
STAGE2_PYTHON = "/usr/bin/python3.11"

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


@dataclass(frozen=True)
class RootSpec:
    """Where the root squashfs is: a GPT partition name, or a file on a labelled iso9660 volume."""

    label: str
    iso_path: str | None = None  # set for a live ISO: the squashfs file's path on the volume

    @property
    def what(self) -> str:
        if self.iso_path is None:
            return f"partition labelled {self.label}"
        return f"iso9660 volume labelled {self.label}"


def parse_root(value: str | None) -> RootSpec:
    """Parse ``talos.root=``: ``ROOT-A`` or ``iso:LABEL/path/to/root.sqsh`` (ISO labels have no ``/``)."""
    if not value:
        return RootSpec(DEFAULT_ROOT_LABEL)
    if not value.startswith(ISO_PREFIX):
        return RootSpec(value)
    label, _, path = value[len(ISO_PREFIX) :].partition("/")
    parts = [p for p in path.split("/") if p]
    if not label or not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"talos.root={value} is not iso:LABEL/path/to/root.sqsh")
    return RootSpec(label, "/".join(parts))


def find_iso9660(label: str, sys_block: Path = Path("/sys/class/block"), dev: str = "/dev") -> str | None:
    """The /dev path of the whole disk or CD whose iso9660 volume is labelled ``label``."""
    if not sys_block.is_dir():
        return None
    for entry in sorted(sys_block.iterdir()):
        try:
            fields = dict(line.partition("=")[::2] for line in (entry / "uevent").read_text().splitlines())
            size = int((entry / "size").read_text().strip() or "0")
        except (OSError, ValueError):
            continue
        name = fields.get("DEVNAME")
        if not name or size == 0 or fields.get("DEVTYPE") == "partition" or name.startswith(("loop", "ram")):
            continue
        if probe_label(f"{dev}/{name}") == ("iso9660", label):
            return f"{dev}/{name}"
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
    """Delete the initramfs' files (it is RAM) without crossing into other mounts.

    The walk is top-down and prunes ``keep`` and every mount point: walking bottom-up visited the
    whole new root and the /proc and /sys moved into it (9 s under software emulation) only to
    skip them.
    """
    root_dev = os.lstat(root).st_dev
    emptied: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        descend = []
        for name in dirnames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):  # a link to a directory (/lib -> usr/lib): remove the link
                with contextlib.suppress(OSError):
                    os.unlink(path)
            elif path != keep and st.st_dev == root_dev:
                descend.append(name)
        dirnames[:] = descend
        for name in filenames:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dirpath, name))
        if dirpath != root:
            emptied.append(dirpath)
    for path in reversed(emptied):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def init_argv(cmdline: kernel_cmdline.Cmdline, init: str = "/sbin/init") -> list[str]:
    """Stage 2's argv: ``talos.importtime=1`` runs it under ``python3 -X importtime`` (a boot profile
    of every import on the console, for finding what slows stage 2 down)."""
    if cmdline.get("talos.importtime") in ("1", "yes", "true"):
        return [STAGE2_PYTHON, "-I", "-X", "importtime", init]
    return [init]


def late_for_platform(late: list[str], platform: str | None, table: str) -> list[str]:
    """The late boot modules this boot loads: those no platform claims, and the named platform's own.

    ``table`` is the bakery's ``platform: module ...`` lines. Every module loads when the platform
    is not named (it is detected later), not in the table, or marked ``*`` (bare metal can be any
    machine): a kvm node does not spend seconds loading the ENA, Xen and Mellanox drivers."""
    claims: dict[str, set[str]] = {}
    for line in table.splitlines():
        name, sep, mods = line.partition(":")
        if sep and not name.lstrip().startswith("#"):
            claims[name.strip()] = {canonical(m) for m in mods.split()}
    mine = claims.get(platform or "")
    if mine is None or "*" in mine:
        return late
    claimed = set().union(*claims.values()) - {"*"}
    return [m for m in late if canonical(m) in mine or canonical(m) not in claimed]


def load_late_modules(names: list[str], release: str, newroot: str = NEWROOT) -> int:
    """Load the boot modules the initramfs does not carry from the mounted root (before the switch).

    They were in the initramfs, which GRUB reads through BIOS calls and the kernel unpacks on every
    boot; from the root they are read only when loaded. (A child loading them beside stage 2 measured
    slower: both then read the squashfs at once.)
    """
    moddir = Path(newroot) / "usr/lib/modules" / release
    return load_modules(moddir, names) if names and moddir.is_dir() else 0


def init_env(environ: Mapping[str, str], late: list[str] | None) -> dict[str, str]:
    """The environment stage 2 starts with: the kernel's, :data:`INIT_ENV`, and the late modules."""
    env = {**environ, **INIT_ENV}
    if late:
        env[LATE_MODULES_ENV] = " ".join(late)
    return env


def switch_root(newroot: str = NEWROOT, argv: list[str] | None = None, late: list[str] | None = None) -> None:
    """Move the kernel filesystems into ``newroot``, make it ``/`` and exec its init.

    ``late`` names the boot modules stage 1 loaded from the root: stage 2 is told (TALOS_LATE_MODULES)
    so its modules phase retries and reports any that failed."""
    argv = argv or ["/sbin/init"]
    for mnt in ("/dev", "/proc", "/sys"):
        syscalls.mount(mnt, newroot + mnt, None, syscalls.MS_MOVE)
    free_initramfs()
    os.chdir(newroot)
    syscalls.mount(newroot, "/", None, syscalls.MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    log("exec " + " ".join(argv))
    os.execve(argv[0], argv, init_env(os.environ, late))


def mount_root(spec: RootSpec, newroot: str = NEWROOT) -> str:
    """Wait for the root's device, mount the squashfs read-only on ``newroot``; says what it mounted."""
    os.makedirs(newroot, exist_ok=True)
    flags = syscalls.MS_RDONLY | syscalls.MS_NODEV
    if spec.iso_path is None:
        device = wait_for(lambda: find_partition(spec.label), ROOT_WAIT_SECONDS, spec.what)
        syscalls.mount(device, newroot, "squashfs", flags)
        return f"{spec.label} ({device})"
    device = wait_for(lambda: find_iso9660(spec.label), ROOT_WAIT_SECONDS, spec.what)
    os.makedirs(ISO_MOUNT, exist_ok=True)
    syscalls.mount(device, ISO_MOUNT, "iso9660", flags | syscalls.MS_NOSUID | syscalls.MS_NOEXEC)
    try:
        image = f"{ISO_MOUNT}/{spec.iso_path}"
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{spec.iso_path} is not on the iso9660 volume {spec.label} ({device})")
        with loopdev.attach(image, read_only=True, autoclear=True) as loop:
            syscalls.mount(loop, newroot, "squashfs", flags)
    finally:
        # The loop device holds the file open, which keeps the volume alive: hide the mount.
        syscalls.umount(ISO_MOUNT, syscalls.MNT_DETACH)
        os.rmdir(ISO_MOUNT)
    return f"{spec.iso_path} on {spec.label} ({device}, via {loop})"


def main() -> None:
    """Stage 1 entry point (``/init`` in the initramfs)."""
    try:
        mount_kernel_filesystems()
        cmdline = kernel_cmdline.read()
        release = os.uname().release
        moddir = Path("/lib/modules") / release
        names = Path(MODULE_LIST).read_text().split() if Path(MODULE_LIST).exists() else []
        late = Path(LATE_MODULE_LIST).read_text().split() if Path(LATE_MODULE_LIST).exists() else []
        if late and Path(PLATFORM_MODULES).exists():
            late = late_for_platform(late, cmdline.get("talos.platform"), Path(PLATFORM_MODULES).read_text())
        count = load_modules(moddir, names) if moddir.is_dir() else 0
        log(f"kernel {release}: loaded {count} modules; {len(late)} more load from the root")
        root = mount_root(parse_root(cmdline.get("talos.root")))
        if late:
            log(f"loaded {load_late_modules(late, release)} more modules from the root")
        log(f"root {root} mounted read-only; switching root")
        switch_root(argv=init_argv(cmdline), late=late)
    except BaseException as exc:  # PID 1 must never exit: say why, then restart the machine
        log(f"FATAL: {exc!r}; rebooting in 30 s")
        time.sleep(30)
        try:
            syscalls.reboot(syscalls.LINUX_REBOOT_CMD_RESTART)
        finally:
            while True:
                time.sleep(3600)
