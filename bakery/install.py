"""Install a baked image onto a disk (or a disk image file): the checks, the write, the read-back.

Safety first: a target that is mounted, used as swap or held by another block device (LVM, RAID,
dm-crypt) is always refused; one that already holds something (a partition table, or any
non-zero byte in its first or last MiB) is refused unless forced; one smaller than the image is
refused with both sizes. The write keeps holes: a fresh file stays sparse, and over old data the
image's zero ranges are zeroed with BLKZEROOUT (disks) or hole punching (files), so EPHEMERAL is
blank and the init formats it on first boot. Then fsync, drop the cached pages, read back and
compare sha256. On a target larger than the image the backup GPT is moved to the real end of
the disk (``sgdisk -e``); partitions are not grown (the init grows EPHEMERAL on first boot).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bakery import gpt
from bakery.errors import BakeError
from bakery.sparse import data_extents
from bakery.tools import run

MiB = 1 << 20
CHUNK = MiB
BLKGETSIZE64 = 0x80081272
BLKFLSBUF = 0x1261
BLKRRPART = 0x125F
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


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


@dataclass
class Report:
    """What the install did, with the figures it prints."""

    target: Target
    image_size: int
    data_bytes: int = 0
    zeroed_bytes: int = 0
    write_seconds: float = 0.0
    verify_seconds: float = 0.0
    sha256: str = ""
    gpt_moved_to: int | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self, image: Path) -> list[str]:
        t = self.target
        kind = "disk" if t.block else "file"
        zero = f", {self.zeroed_bytes // MiB} MiB zeroed" if self.zeroed_bytes else ""
        if t.fresh:
            zero = ", the rest left as holes"
        out = [
            f"wrote {image.name} to {kind} {t.path}: {self.image_size // MiB} MiB "
            f"({self.data_bytes // MiB} MiB of data{zero}) in {self.write_seconds:.1f} s",
            f"verified: the first {self.image_size // MiB} MiB read back have the image's sha256 "
            f"{self.sha256[:16]}... ({self.verify_seconds:.1f} s)",
        ]
        if self.gpt_moved_to is not None:
            out.append(
                f"moved the backup GPT to the end of the {self.gpt_moved_to // MiB} MiB {kind} "
                "(EPHEMERAL grows into the rest on first boot)"
            )
        return out + self.notes


def _size_of_block_device(path: Path) -> int:
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
            raise BakeError(
                f"{path} does not exist: name an existing disk (`lsblk` lists them); files are only "
                "created outside /dev"
            ) from None
        if not real.parent.is_dir():
            raise BakeError(
                f"{path}: no such disk, and its directory does not exist to create a file"
            ) from None
        return Target(real, block=False, size=0, exists=False)
    if stat.S_ISBLK(st.st_mode):
        return Target(real, block=True, size=_size_of_block_device(real), exists=True, rdev=st.st_rdev)
    if stat.S_ISREG(st.st_mode):
        return Target(real, block=False, size=st.st_size, exists=True)
    raise BakeError(f"{path} is neither a block device nor a regular file: name a disk such as /dev/sdb")


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
        raise BakeError(f"cannot read {system.mountinfo} to check for mounts: {exc.strerror}") from None
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
    if len(head) >= 1024 and head[512:520] == gpt.SIGNATURE:
        found.append("a GPT partition table")
    elif len(head) >= 512 and head[510:512] == b"\x55\xaa":
        found.append("an MBR boot signature")
    if len(tail) >= 512 and tail[-512:-504] == gpt.SIGNATURE and "a GPT partition table" not in found:
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


def check(target: Target, image: Path, image_size: int, force: bool, system: System = System()) -> list[str]:
    """Refuse a target that is in use, too small, the image itself, or (unless forced) not empty;
    returns what a forced target held."""
    if target.exists and os.path.samefile(target.path, image):
        raise BakeError(f"{target.path} is the image itself: name another disk or file")
    busy = uses(target, system)
    if busy:
        raise BakeError(f"refusing to write to {target.path}: {'; '.join(busy)}; unmount or release it first")
    if target.size and target.size < image_size:
        raise BakeError(
            f"{target.path} has {target.size // MiB} MiB but the image needs {image_size // MiB} MiB: "
            "use a larger disk or bake with a smaller --disk-size"
        )
    found = signatures(*read_ends(target))
    if found and not force:
        raise BakeError(
            f"refusing to overwrite {target.path}: it holds {' and '.join(found)}; pass --force to overwrite it"
        )
    return found


# --- the write ------------------------------------------------------------------------------


def runs(image: Path, chunk: int = CHUNK) -> Iterator[tuple[int, bytes | int]]:
    """``(offset, data)`` for non-zero chunks and ``(offset, length)`` for zero ranges, in order.

    Holes are found with SEEK_DATA/SEEK_HOLE without reading them; data extents are read in
    ``chunk``-sized pieces and all-zero pieces are reported as zero ranges too.
    """
    size = image.stat().st_size
    with open(image, "rb") as f:
        pos = 0
        for start, end in data_extents(f.fileno(), size):
            if start > pos:
                yield pos, start - pos
            pos = start
            while pos < end:
                f.seek(pos)
                piece = f.read(min(chunk, end - pos))
                if piece.count(0) == len(piece):
                    yield pos, len(piece)
                else:
                    yield pos, piece
                pos += len(piece)
        if pos < size:
            yield pos, size - pos


def coalesce(items: Iterator[tuple[int, bytes | int]]) -> Iterator[tuple[int, bytes | int]]:
    """Merge adjacent zero ranges so each becomes one zeroing call."""
    pending: tuple[int, int] | None = None
    for offset, item in items:
        if isinstance(item, int):
            pending = (pending[0], pending[1] + item) if pending else (offset, item)
            continue
        if pending:
            yield pending
            pending = None
        yield offset, item
    if pending:
        yield pending


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def zero_range(fd: int, offset: int, length: int, block: bool) -> None:
    """Make ``length`` bytes at ``offset`` read as zeros: BLKZEROOUT on a disk, a punched hole in a
    file, else by writing zeros."""
    try:
        if block:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        else:
            _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
            raise
    zeros = bytes(CHUNK)
    end = offset + length
    while offset < end:
        n = min(CHUNK, end - offset)
        os.pwrite(fd, zeros[:n], offset)
        offset += n


def _update_zeros(h: hashlib._Hash, length: int) -> None:
    zeros = bytes(CHUNK)
    while length:
        n = min(CHUNK, length)
        h.update(zeros[:n])
        length -= n


def write(
    image: Path, target: Target, progress: Callable[[int, int], None] | None = None
) -> tuple[int, int, str]:
    """Write ``image`` onto ``target``; returns (data bytes, zeroed bytes, the image's sha256)."""
    size = image.stat().st_size
    h = hashlib.sha256()
    data = zeroed = 0
    flags = os.O_WRONLY | os.O_CLOEXEC | (0 if target.exists else os.O_CREAT | os.O_EXCL)
    fd = os.open(target.path, flags, 0o644)
    try:
        for offset, item in coalesce(runs(image)):
            if isinstance(item, int):
                _update_zeros(h, item)
                if not target.fresh:
                    zero_range(fd, offset, item, target.block)
                    zeroed += item
                end = offset + item
            else:
                h.update(item)
                os.pwrite(fd, item, offset)
                data += len(item)
                end = offset + len(item)
            if progress:
                progress(end, size)
        if target.fresh:
            os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data, zeroed, h.hexdigest()


def read_back_sha256(target: Target, length: int) -> str:
    """sha256 of the first ``length`` bytes as the disk has them, not as the page cache does."""
    fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if target.block:
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, BLKFLSBUF, 0)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        buf = memoryview(bytearray(CHUNK * 4))
        pos = 0
        while pos < length:
            n = os.preadv(fd, [buf[: min(len(buf), length - pos)]], pos)
            if n == 0:
                raise BakeError(f"{target.path} ended after {pos} bytes while reading it back")
            h.update(buf[:n])
            pos += n
        return h.hexdigest()
    finally:
        os.close(fd)


def reread_partitions(target: Target) -> None:
    """Ask the kernel to read the new partition table (a disk only; loop devices without partition
    scanning say EINVAL, which is fine)."""
    if not target.block:
        return
    fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, BLKRRPART, 0)
    finally:
        os.close(fd)


def install(
    image: Path,
    disk: Path,
    *,
    force: bool = False,
    system: System = System(),
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check, write, sync, verify, and fix the backup GPT on a larger target."""
    image_size = image.stat().st_size
    partitions = gpt.read_partitions(image)  # refuse a non-GPT image before touching the disk
    target = inspect_target(disk)
    held = check(target, image, image_size, force, system)
    report = Report(target=target, image_size=image_size)
    if held:
        report.notes.append(f"overwrote (--force) what {target.path} held: {' and '.join(held)}")
    started = time.monotonic()
    report.data_bytes, report.zeroed_bytes, report.sha256 = write(image, target, progress)
    report.write_seconds = time.monotonic() - started
    started = time.monotonic()
    if read_back_sha256(target, image_size) != report.sha256:
        raise BakeError(
            f"{target.path} does not read back what was written: the disk may be failing; try another disk"
        )
    report.verify_seconds = time.monotonic() - started
    if target.size > image_size:
        run(["sgdisk", "-e", target.path], what="sgdisk -e (move the backup GPT to the end)")
        report.gpt_moved_to = target.size
        if gpt.read_partitions(target.path) != partitions or not backup_header_at_end(target):
            raise BakeError(
                f"{target.path}: the partition table is wrong after moving the backup GPT; install again"
            )
    reread_partitions(target)
    return report


def backup_header_at_end(target: Target) -> bool:
    """True when the last sector holds a valid GPT header that says it is the backup at that LBA."""
    with open(target.path, "rb") as f:
        f.seek(target.size - gpt.SECTOR)
        header = gpt.parse_header(f.read(gpt.SECTOR))
    return header is not None and header.current_lba == target.size // gpt.SECTOR - 1
