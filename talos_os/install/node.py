"""The installer a node booted from the live ISO runs on itself, with the config pushed to it.

It writes the image the ISO carries (:mod:`talos_os.install.image`: the ISO's own squashfs plus
``image.bin``) to ``machine.install.disk`` with the writer ``talos-bake install`` uses, checks the
sha256 of what it wrote against the baked image's and reads it back, lets the kernel read the new
partition table, then formats EPHEMERAL exactly as a first boot would (grown to the end of the
disk) and saves the config on it as ``/var/lib/talos/config.yaml``: the installed system finds it
there before any platform source. The node then reboots; the ISO's GRUB menu boots the disk from
then on (see :mod:`bakery.iso`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from talos_os import pki
from talos_os.init import disks, syscalls
from talos_os.init.reconfigure import SAVED
from talos_os.install import image, writer
from talos_os.install.disk import InstallError, System, check, inspect_target

ISO_DIR = Path("/run/talos/iso")
NEW_VAR = Path("/run/talos/install-var")
PARTITION_WAIT = 30.0
MiB = 1 << 20
SYSTEM = System()  # the kernel's real views

Log = Callable[[str], None]


def mount_iso(label: str, target: Path = ISO_DIR) -> Path:  # pragma: no cover - needs root and the ISO
    """Mount the live ISO (read-only) again where the installer and the maintenance API read it."""
    from talos_os.init.stage1 import find_iso9660

    device = find_iso9660(label)
    if device is None:
        raise InstallError(f"the live ISO (volume {label}) is gone: put it back to install from it")
    if not os.path.ismount(target):
        target.mkdir(parents=True, exist_ok=True)
        flags = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
        syscalls.mount(device, str(target), "iso9660", flags)
    return target


@dataclass(frozen=True)
class Installed:
    """What the installer did, for the console."""

    disk: str
    image_size: int
    data_bytes: int
    seconds: float
    ephemeral: str


def _progress(log: Log) -> Callable[[int, int], None]:
    shown = [-1]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // total if total else 10
        if tenth > shown[0]:
            shown[0] = tenth
            log(f"install: {done // MiB}/{total // MiB} MiB written")

    return report


def _wait_for_ephemeral(ops: disks.DiskOps, disk: str, timeout: float = PARTITION_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while disks.pick(ops.partitions(), disks.EPHEMERAL, disk) is None:
        if time.monotonic() > deadline:
            raise InstallError(f"the kernel shows no {disks.EPHEMERAL} partition on {disk} after the install")
        time.sleep(0.2)


def install(
    disk: str,
    wipe: bool,
    config: bytes,
    iso: Path,
    log: Log,
    ops: disks.DiskOps,
    *,
    system: System = SYSTEM,
) -> Installed:
    """Check the disk again, write and verify the image, format EPHEMERAL and save ``config`` on it."""
    started = time.monotonic()
    mapping = image.ImageMap.from_json((iso / image.MAP_PATH).read_text())
    target = inspect_target(Path(disk))
    if not target.block:
        raise InstallError(f"{disk} is not a disk")
    check(target, mapping.size, wipe, system, force_hint="set machine.install.wipe: true to overwrite it")
    log(f"install: writing the {mapping.size // MiB} MiB image to {disk} ({target.size // MiB} MiB)")
    runs = image.runs(mapping, iso / image.DATA_PATH, iso / image.ROOT_PATH)
    data, _zeroed, digest = writer.write(runs, mapping.size, target, _progress(log))
    if digest != mapping.sha256:
        raise InstallError("the ISO's image does not match its sha256: the ISO is damaged; write it again")
    if writer.read_back_sha256(target, mapping.size) != digest:
        raise InstallError(
            f"{disk} does not read back what was written: the disk may be failing; try another disk"
        )
    log(f"install: verified: {disk} reads back the image's sha256 {digest[:16]}...")
    writer.reread_partitions(target)
    _wait_for_ephemeral(ops, disk)
    NEW_VAR.mkdir(parents=True, exist_ok=True)
    result = disks.prepare_ephemeral(ops, log, target=NEW_VAR, prefer_disk=disk)
    if not result.mounted or result.device is None:
        raise InstallError(f"{disk}: EPHEMERAL could not be prepared: {result.problem}")
    try:
        saved = NEW_VAR / SAVED.relative_to("/var")
        saved.parent.mkdir(parents=True, exist_ok=True)
        pki.write_secret(saved, config)
        log(f"install: saved the machine config on {result.device} as {SAVED}")
    finally:
        os.sync()
        with contextlib.suppress(OSError):
            syscalls.umount(str(NEW_VAR))
    os.sync()
    return Installed(disk, mapping.size, data, time.monotonic() - started, result.device)
