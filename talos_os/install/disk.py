"""The install target: what it is, whether something uses it, and whether it holds anything.

A target that is mounted, used as swap or held by another block device (LVM, RAID, dm-crypt) is
always refused; one that already holds something (a partition table, or any non-zero byte in its
first or last MiB) is refused unless forced; one smaller than the image is refused with both
sizes. The caller says how its user forces (``--force`` on the host, ``install.wipe`` on a node).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
BLKGETSIZE64 = 0x80081272
GPT_SIGNATURE = b"EFI PART"


class InstallError(Exception):
    """A target or image the installer refuses; the message is one sentence with the fix."""


@dataclass(frozen=True)
class Target:
    """The disk or file to install onto, as found before writing."""

    path: Path  # symlinks (/dev/disk/by-id/...) resolved
    block: bool
    size: int  # bytes; 0 for a file that does not exist yet
    exists: bool
    rdev: int = 0  # device number of a block device

    @property
    def fresh(self) -> bool:
        """A new or empty file: nothing to overwrite, so zero ranges can stay holes."""
        return not self.block and self.size == 0


@dataclass(frozen=True)
class System:
    """Where the kernel's views live; tests point these at fake trees."""

    mountinfo: Path = Path("/proc/self/mountinfo")
    swaps: Path = Path("/proc/swaps")
    sys: Path = Path("/sys")


def size_of_block_device(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        size: int = struct.unpack("Q", buf)[0]
        return size
    finally:
        os.close(fd)


def inspect_target(path: Path) -> Target:
    """What ``path`` is: a block device, an existing file, or a file to create."""
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        if real == Path("/dev") or Path("/dev") in real.parents:  # a typo'd device, not a file to create
            raise InstallError(
                f"{path} does not exist: name an existing disk (`lsblk` lists them); files are only "
                "created outside /dev"
            ) from None
        if not real.parent.is_dir():
            raise InstallError(
                f"{path}: no such disk, and its directory does not exist to create a file"
            ) from None
        return Target(real, block=False, size=0, exists=False)
    if stat.S_ISBLK(st.st_mode):
        return Target(real, block=True, size=size_of_block_device(real), exists=True, rdev=st.st_rdev)
    if stat.S_ISREG(st.st_mode):
        return Target(real, block=False, size=st.st_size, exists=True)
    raise InstallError(f"{path} is neither a block device nor a regular file: name a disk such as /dev/sdb")


# --- in use? ------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """``(major:minor, mount point, source)`` for every line of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 7:
            continue
        sep = fields.index("-")
        source = fields[sep + 2] if len(fields) > sep + 2 else ""
        mounts.append((fields[2], _unescape(fields[4]), _unescape(source)))
    return mounts


def block_family(sys_root: Path, rdev: int) -> dict[str, str]:
    """``major:minor -> name`` of a block device and its partitions, from sysfs."""
    majmin = f"{os.major(rdev)}:{os.minor(rdev)}"
    node = sys_root / "dev/block" / majmin
    family = {majmin: node.resolve().name if node.exists() else majmin}
    if node.is_dir():
        for child in sorted(node.iterdir()):
            if (child / "partition").exists():
                with contextlib.suppress(OSError):
                    family[(child / "dev").read_text().strip()] = child.name
    return family


def _holders(sys_root: Path, names: dict[str, str]) -> list[str]:
    found = []
    for majmin, name in names.items():
        holders = sys_root / "dev/block" / majmin / "holders"
        with contextlib.suppress(OSError):
            found += [f"{name} is held by {h.name}" for h in sorted(holders.iterdir())]
    return found


def _loop_backings(sys_root: Path, path: Path) -> list[str]:
    found = []
    block = sys_root / "class/block"
    with contextlib.suppress(OSError):
        for dev in sorted(block.iterdir()):
            backing = dev / "loop/backing_file"
            with contextlib.suppress(OSError):
                if backing.read_text().strip() == str(path):
                    found.append(f"it backs /dev/{dev.name}")
    return found


def uses(target: Target, system: System = System()) -> list[str]:
    """Why the target is in use (mounted, swap, held, a loop device's file), empty when it is free."""
    if not target.exists:
        return []
    family = block_family(system.sys, target.rdev) if target.block else {}
    paths = {str(target.path)} | {f"/dev/{name}" for name in family.values()}
    found = []
    try:
        mounts = parse_mountinfo(system.mountinfo.read_text())
    except OSError as exc:
        raise InstallError(f"cannot read {system.mountinfo} to check for mounts: {exc.strerror}") from None
    for majmin, point, source in mounts:
        if majmin in family:
            found.append(f"/dev/{family[majmin]} is mounted on {point}")
        elif source in paths or (source.startswith("/") and os.path.realpath(source) in paths):
            found.append(f"{source} is mounted on {point}")
    with contextlib.suppress(OSError):
        for line in system.swaps.read_text().splitlines()[1:]:
            name = _unescape(line.split()[0]) if line.split() else ""
            if name in paths:
                found.append(f"{name} is used as swap")
    found += _holders(system.sys, family)
    found += _loop_backings(system.sys, target.path)
    return list(dict.fromkeys(found))


# --- holds something? -----------------------------------------------------------------------


def signatures(head: bytes, tail: bytes) -> list[str]:
    """What the first and last MiB say is already there (empty list: all zeros)."""
    found = []
    if len(head) >= 1024 and head[512:520] == GPT_SIGNATURE:
        found.append("a GPT partition table")
    elif len(head) >= 512 and head[510:512] == b"\x55\xaa":
        found.append("an MBR boot signature")
    if len(tail) >= 512 and tail[-512:-504] == GPT_SIGNATURE and "a GPT partition table" not in found:
        found.append("a backup GPT header")
    if not found and head.count(0) != len(head):
        found.append("data in its first MiB")
    if not found and tail.count(0) != len(tail):
        found.append("data in its last MiB")
    return found


def read_ends(target: Target) -> tuple[bytes, bytes]:
    """The first and the last MiB of the target (less when it is smaller)."""
    if target.size == 0:
        return b"", b""
    with open(target.path, "rb") as f:
        head = f.read(min(MiB, target.size))
        f.seek(max(0, target.size - MiB))
        tail = f.read()
    return head, tail


def check(
    target: Target,
    image_size: int,
    force: bool,
    system: System = System(),
    *,
    force_hint: str = "pass --force to overwrite it",
    smaller_hint: str = "use a larger disk or bake with a smaller --disk-size",
) -> list[str]:
    """Refuse a target that is in use, too small or (unless forced) not empty; returns what a forced
    target held."""
    busy = uses(target, system)
    if busy:
        raise InstallError(
            f"refusing to write to {target.path}: {'; '.join(busy)}; unmount or release it first"
        )
    if target.size and target.size < image_size:
        raise InstallError(
            f"{target.path} has {target.size // MiB} MiB but the image needs {image_size // MiB} MiB: {smaller_hint}"
        )
    found = signatures(*read_ends(target))
    if found and not force:
        raise InstallError(
            f"refusing to overwrite {target.path}: it holds {' and '.join(found)}; {force_hint}"
        )
    return found
