"""Writing a verified bundle into the other slot, in the order that survives a power cut.

1. verify the whole bundle (nothing is written before every check passed);
2. grubenv: the target slot is ``writing`` (not bootable, not a rollback target), the running slot
   is the default;
3. the squashfs into the target ROOT partition, fsync, read back and compare its sha256;
4. the kernel and initramfs into ``/boot/<slot>/`` on BOOT (temporary names, fsync, rename, fsync);
5. grubenv last: the target slot is on trial and GRUB's ``next_entry`` boots it once.

A power cut before 5 leaves GRUB booting the running slot (the default); after 5 it boots the
complete new slot once, and the old one again if that never becomes ready. The disk side is behind
:class:`SlotOps`, so the tests run all of it against plain files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from talos_os.lib.atomic import atomic_path
from talos_os.upgrade import bundle, grubenv, slots

GRUBENV = Path("boot/grub/grubenv")  # on the BOOT filesystem
Progress = Callable[[str, int, int], None]  # phase, bytes done, bytes total


class SlotOps(Protocol):
    """The node's disks as the writer needs them."""

    def root_device(self, slot: str) -> Path: ...

    def device_size(self, device: Path) -> int: ...

    def boot(self, writable: bool) -> contextlib.AbstractContextManager[Path]: ...


@dataclass(frozen=True)
class Written:
    slot: str
    version: str
    root_bytes: int
    kernel_args: str


def read_env(ops: SlotOps) -> dict[str, str]:
    with ops.boot(False) as root:
        path = root / GRUBENV
        return grubenv.read(path) if path.exists() else {}


def update_env(ops: SlotOps, change: Callable[[dict[str, str]], dict[str, str]]) -> dict[str, str]:
    """Read grubenv, and rewrite it in place when ``change`` changes it (BOOT is mounted read-write
    only then: a boot that changes nothing writes nothing to BOOT). ``change`` must be a pure
    function of the environment it is given (it may run twice)."""
    with ops.boot(False) as root:
        path = root / GRUBENV
        env = grubenv.read(path) if path.exists() else {}
    if change(env) == env:
        return env
    with ops.boot(True) as root:
        path = root / GRUBENV
        env = grubenv.read(path) if path.exists() else {}
        new = change(env)
        if new != env:
            grubenv.write(path, new)
        return new


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_fits(manifest: bundle.Manifest, ops: SlotOps, target: str) -> Path:
    """The target ROOT partition holds the squashfs, else one sentence (before anything is written)."""
    device = ops.root_device(target)
    room = ops.device_size(device)
    need = manifest.parts["root"].size
    if need > room:
        raise bundle.BundleError(
            f"the bundle's root ({need >> 20} MiB) does not fit slot {target}'s partition ({room >> 20} MiB): "
            "bake a smaller image or reinstall with larger ROOT partitions"
        )
    return device


def check_boot_room(manifest: bundle.Manifest, boot_root: Path, target: str) -> None:
    """BOOT has room for the new kernel and initramfs (besides what they replace)."""
    need = manifest.parts["kernel"].size + manifest.parts["initramfs"].size
    st = os.statvfs(boot_root)
    free = st.f_bavail * st.f_frsize
    slot_dir = boot_root / "boot" / target
    for name in ("vmlinuz", "initramfs.zst"):
        with contextlib.suppress(FileNotFoundError):
            free += (slot_dir / name).stat().st_size
    if need + (1 << 20) > free:
        raise bundle.BundleError(
            f"the BOOT partition has {free >> 20} MiB free, the bundle's kernel and initramfs need {need >> 20} MiB"
        )


def write_root(source: Path, part: bundle.Part, device: Path, progress: Progress) -> None:
    """The squashfs onto the partition, synced, then read back and compared."""
    done = 0

    def count(phase: str) -> Callable[[int], None]:
        def add(n: int) -> None:
            nonlocal done
            done += n
            progress(phase, done, part.size)

        return add

    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:

        def write(chunk: bytes) -> None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]

        bundle.copy_part(source, part, write, count("writing root"))
        os.fsync(fd)
    finally:
        os.close(fd)
    done = 0
    add = count("checking root")
    h = hashlib.sha256()
    with open(device, "rb") as f:
        left = part.size
        while left:
            chunk = f.read(min(bundle.CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
            add(len(chunk))
    if h.hexdigest() != part.sha256:
        raise OSError(f"slot partition {device} does not read back what was written: the disk is failing")


def write_boot_files(source: Path, manifest: bundle.Manifest, slot_dir: Path, progress: Progress) -> None:
    """Kernel and initramfs under temporary names, synced, then renamed into place."""
    slot_dir.mkdir(parents=True, exist_ok=True)
    for name in ("kernel", "initramfs"):
        part = manifest.parts[name]
        final = slot_dir / part.filename
        with atomic_path(final) as tmp, open(tmp, "wb") as f:  # renamed (after fsync) only if it matches

            def write(chunk: bytes, out: BinaryIO = f) -> None:
                out.write(chunk)

            digest = bundle.copy_part(source, part, write)
            progress(f"writing {part.filename}", part.size, part.size)
            if digest != part.sha256:
                raise OSError(f"{final} was not written correctly")
    _fsync_dir(slot_dir)


def install(
    source: Path,
    ops: SlotOps,
    running: str,
    *,
    arch: str | None = None,
    progress: Progress = lambda _phase, _done, _total: None,
) -> Written:
    """Verify ``source``, write it into the slot that is not ``running`` and arm it for the next boot."""
    total = source.stat().st_size
    verified = 0

    def verifying(n: int) -> None:
        nonlocal verified
        verified += n
        progress("verifying", verified, total)

    manifest = bundle.verify(source, arch, verifying)
    target = slots.other(running)
    device = check_fits(manifest, ops, target)
    with ops.boot(True) as root:  # BOOT is writable only for the moments it is written
        check_boot_room(manifest, root, target)
        path = root / GRUBENV
        env = grubenv.read(path) if path.exists() else {}
        env, _target = slots.begin_write(env, running)
        grubenv.write(path, env)
    write_root(source, manifest.parts["root"], device, progress)
    with ops.boot(True) as root:
        write_boot_files(source, manifest, root / "boot" / target, progress)
        path = root / GRUBENV
        env = slots.arm(grubenv.read(path), running, target, manifest.version, manifest.kernel_args)
        grubenv.write(path, env)
        _fsync_dir(path.parent)
    progress("armed", total, total)
    return Written(target, manifest.version, manifest.parts["root"].size, manifest.kernel_args)


@contextlib.contextmanager
def directory(path: Path) -> Iterator[Path]:
    """A BOOT filesystem that is a plain directory (tests, and a node whose BOOT is already mounted)."""
    yield path
