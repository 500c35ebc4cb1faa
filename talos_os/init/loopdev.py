"""Attach a file to a loop block device with ioctls, no losetup: stage 1 mounts the squashfs file
that a live ISO carries through one.

Standard library only (this runs in the initramfs). ``LOOP_CTL_GET_FREE`` on /dev/loop-control
picks a device; ``LOOP_CONFIGURE`` (Linux 5.8+) binds the file and sets the flags in one call,
older kernels get ``LOOP_SET_FD`` + ``LOOP_SET_STATUS64``. The struct layouts are pure functions
so they are unit-tested byte for byte; the ioctl itself is proven on the host and in the ISO boot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOP_CONTROL = "/dev/loop-control"
LOOP_MAJOR = 7

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64

# struct loop_info64 (linux/loop.h): 5 x u64, 4 x u32, file name, crypt name, key, 2 x u64
INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# struct loop_config: u32 fd, u32 block_size, struct loop_info64, 8 x u64 reserved
CONFIG = struct.Struct(f"=II{INFO64.size}s64x")

Ioctl = Callable[..., Any]  # fcntl.ioctl; tests may pass a recorder


@dataclass(frozen=True)
class LoopInfo:
    """The parts of ``struct loop_info64`` we set or check."""

    number: int
    offset: int
    sizelimit: int
    flags: int
    file_name: str


def pack_info64(file_name: str, flags: int, offset: int = 0, sizelimit: int = 0) -> bytes:
    """A ``struct loop_info64``; the kernel keeps ``file_name`` (truncated) for /sys and losetup."""
    name = os.fsencode(file_name)[: LO_NAME_SIZE - 1]
    return INFO64.pack(0, 0, 0, offset, sizelimit, 0, 0, 0, flags, name, b"", b"", 0, 0)


def unpack_info64(raw: bytes) -> LoopInfo:
    """Parse what ``LOOP_GET_STATUS64`` returns."""
    f = INFO64.unpack(raw[: INFO64.size])
    return LoopInfo(
        number=f[5], offset=f[3], sizelimit=f[4], flags=f[8], file_name=os.fsdecode(f[9].rstrip(b"\0"))
    )


def pack_config(fd: int, file_name: str, flags: int, block_size: int = 0) -> bytes:
    """A ``struct loop_config`` for ``LOOP_CONFIGURE`` (block_size 0: the kernel's default, 512)."""
    return CONFIG.pack(fd, block_size, pack_info64(file_name, flags))


def _device_node(number: int, dev_dir: str) -> str:
    """``/dev/loopN``, created if devtmpfs has not made it (it normally has)."""
    path = f"{dev_dir}/loop{number}"
    if not os.path.exists(path):
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(LOOP_MAJOR, number))
    return path


def _configure(loop_fd: int, backing_fd: int, name: str, flags: int, ioctl: Ioctl) -> None:
    try:
        ioctl(loop_fd, LOOP_CONFIGURE, pack_config(backing_fd, name, flags))
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    # Before 5.8: bind first, then set the flags (read-only comes from the fd's open mode).
    ioctl(loop_fd, LOOP_SET_FD, backing_fd)
    try:
        ioctl(loop_fd, LOOP_SET_STATUS64, pack_info64(name, flags & ~LO_FLAGS_READ_ONLY))
    except OSError:
        ioctl(loop_fd, LOOP_CLR_FD, 0)
        raise


@contextlib.contextmanager
def attach(
    path: str | Path,
    *,
    read_only: bool = True,
    autoclear: bool = True,
    control: str = LOOP_CONTROL,
    dev_dir: str = "/dev",
    ioctl: Ioctl = fcntl.ioctl,
) -> Iterator[str]:
    """Bind ``path`` to a free loop device and yield the device's path, held open.

    With ``autoclear`` the kernel unbinds the file when the device's last opener closes it: mount
    it inside the ``with`` block and the mount keeps it alive afterwards (unmounting frees it);
    leave the block without mounting and it is gone. Another process may grab the same free
    device between GET_FREE and the bind (EBUSY): then ask for the next one.
    """
    mode = os.O_RDONLY if read_only else os.O_RDWR
    flags = (LO_FLAGS_READ_ONLY if read_only else 0) | (LO_FLAGS_AUTOCLEAR if autoclear else 0)
    name = os.path.abspath(path)
    device, loop_fd = "", -1
    backing = os.open(name, mode | os.O_CLOEXEC)
    try:
        ctl = os.open(control, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(16):
                number = int(ioctl(ctl, LOOP_CTL_GET_FREE, 0))
                device = _device_node(number, dev_dir)
                loop_fd = os.open(device, mode | os.O_CLOEXEC)
                try:
                    _configure(loop_fd, backing, name, flags, ioctl)
                    break
                except OSError as exc:
                    os.close(loop_fd)
                    loop_fd = -1
                    if exc.errno != errno.EBUSY:
                        raise OSError(exc.errno, f"binding {name} to {device}: {exc.strerror}") from None
            else:
                raise OSError(
                    errno.EBUSY, f"no free loop device for {name}: every one was taken while trying"
                )
        finally:
            os.close(ctl)
    finally:
        os.close(backing)  # the loop device holds its own reference to the file
    try:
        yield device
    finally:
        os.close(loop_fd)


def status(device: str, ioctl: Ioctl = fcntl.ioctl) -> LoopInfo:
    """What the kernel says about a bound loop device (ENXIO when it is free)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return unpack_info64(bytes(ioctl(fd, LOOP_GET_STATUS64, bytes(INFO64.size))))
    finally:
        os.close(fd)
