"""Thin ctypes wrappers for the syscalls the init needs and Python's os module lacks.

Standard library only: this module runs inside the initramfs. Every wrapper raises OSError
with the errno and the arguments, so a failing mount says what it tried.
"""

from __future__ import annotations

import ctypes
import os

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20

MNT_DETACH = 2

LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_CAD_OFF = 0x00000000

SYS_FINIT_MODULE = 313  # x86_64
MODULE_INIT_IGNORE_MODVERSIONS = 1
MODULE_INIT_IGNORE_VERMAGIC = 2

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library, loaded once with errno tracking: the interpreter's own (its symbols are already
    in the process; ``ctypes.util.find_library`` would import subprocess and try to run ldconfig)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2)."""
    _check(
        libc().mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target} ({fstype or 'no type'})",
    )


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(libc().umount2(target.encode(), flags), f"umount {target}")


def finit_module(path: str, params: str = "") -> bool:
    """Load a kernel module from a file. Returns False when it was already loaded."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        result = libc().syscall(SYS_FINIT_MODULE, fd, params.encode(), 0)
        if result < 0:
            err = ctypes.get_errno()
            if err == 17:  # EEXIST
                return False
            raise OSError(err, f"finit_module {path}: {os.strerror(err)}")
        return True
    finally:
        os.close(fd)


def reboot(cmd: int) -> None:
    """reboot(2): restart, power off, or route Ctrl-Alt-Del to PID 1 (CAD_OFF)."""
    _check(libc().reboot(ctypes.c_int(cmd)), "reboot")


def sethostname(name: str) -> None:
    """sethostname(2)."""
    raw = name.encode()
    _check(libc().sethostname(raw, len(raw)), f"sethostname {name}")
