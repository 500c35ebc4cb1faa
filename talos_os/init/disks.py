"""The EPHEMERAL partition: found by GPT name, grown to the disk's end, formatted once, mounted at /var.

Every boot, :func:`prepare_ephemeral`:

1. finds the partitions by GPT name in ``/sys/class/block/*/uevent`` (``PARTNAME``);
2. grows the GPT when the disk is larger than the image (:mod:`talos_os.lib.gpt`) and tells the
   kernel the new size of EPHEMERAL with ``BLKPG_RESIZE_PARTITION`` (BLKRPART would fail: ROOT-A
   is mounted);
3. looks at the first MiB: all zeros is a blank partition, formatted with ``mkfs.ext4 -L
   EPHEMERAL``; our ext4 is checked with ``e2fsck -p``; anything else (another filesystem, LUKS,
   LVM, an ext4 with some other label, unknown bytes) is *not ours*: it is left untouched and
   /var is not mounted from it (the operator resets the node to reclaim the partition);
4. grows the filesystem with ``resize2fs`` (offline, after ``e2fsck -f``) when the partition is
   larger than it, mounts it on /var (nosuid, nodev, noatime) and creates the standard layout.

e2fsck policy: exit 0-2 is fine (2 "reboot needed" only matters for a mounted fs; EPHEMERAL is
not mounted yet). Exit 4 (errors ``-p`` dare not fix) is retried with ``e2fsck -f -y``: the node
has no shell for an operator to answer fsck's questions, and a repaired /var (with lost+found)
beats a node that cannot start. If the filesystem still has errors, it is mounted read-only so
its data stays readable and the result says so (``read_only``/``problem``): the caller decides
whether to run services on it.

Side effects go through :class:`DiskOps` (``SystemDiskOps`` on the node); the logic is tested on
sparse images and loop devices on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from talos_os.init import syscalls
from talos_os.lib import gpt
from talos_os.lib.gpt import SECTOR  # sysfs's unit for start and size, whatever the device's sector

EPHEMERAL = "EPHEMERAL"
VAR = Path("/var")
MiB = 1 << 20
PROBE_BYTES = MiB  # blank means: the first MiB is all zeros
RESIZE_SLACK = 4 * MiB  # resize2fs may leave a tail too small for a block group: do not retry it
MS_NOATIME = 1024
MOUNT_FLAGS = syscalls.MS_NOSUID | syscalls.MS_NODEV | MS_NOATIME
# Without delayed allocation a write gets its blocks at once, so ext4's ordered mode puts the data
# on the disk before the next journal commit (every 5 s). containerd 1.6 never syncs the layers it
# unpacks; with delayed allocation a power cut in the half minute after a pull left their files
# empty while the snapshot stayed recorded as complete (the cluster e2e: a worker powered off right
# after its pod started came back with `exec /hello: exec format error`, /hello 0 bytes).
MOUNT_DATA = "nodelalloc"
TOOL_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"

# (relative path, mode) created on every mount; "run" is a symlink to /run (the FHS says so).
VAR_LAYOUT: tuple[tuple[str, int], ...] = (
    ("log", 0o755),
    ("lib", 0o755),
    ("lib/containerd", 0o711),
    ("tmp", 0o1777),
)
VAR_SYMLINKS: tuple[tuple[str, str], ...] = (("run", "/run"),)

EXT_SUPERBLOCK = 1024
EXT_MAGIC = 0xEF53
EXT_INCOMPAT_64BIT = 0x80

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[bytes]]


class DiskError(RuntimeError):
    """EPHEMERAL could not be prepared; the message names the device and what to do."""


@dataclass(frozen=True)
class Partition:
    """A partition as the running kernel sees it (sysfs): its device node and disk, ``start`` and
    ``size`` in 512-byte sectors. Not a table entry (:class:`talos_os.lib.gpt.GptPartition`): this is
    a block device the init formats and mounts, and its size is what the kernel believes."""

    name: str
    device: str
    disk: str
    number: int
    start: int
    size: int

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR


class Content(enum.Enum):
    BLANK = "blank"
    OURS = "ours"  # an ext2/3/4 filesystem labelled EPHEMERAL
    FOREIGN = "foreign"


@dataclass(frozen=True)
class Probe:
    """What the first MiB of a partition holds."""

    content: Content
    what: str  # "blank", "ext4 EPHEMERAL", "xfs", "an ext4 filesystem labelled 'data'"...
    fs_bytes: int = 0  # size of our filesystem, from its superblock


@dataclass(frozen=True)
class EphemeralResult:
    """What :func:`prepare_ephemeral` did. ``device`` is None when there is no EPHEMERAL partition."""

    device: str | None
    mounted: bool
    formatted: bool = False
    grown: bool = False  # the partition or the filesystem got bigger this boot
    size: int = 0  # bytes of the filesystem
    read_only: bool = False
    problem: str | None = None  # why /var is not (or only read-only) on EPHEMERAL


class DiskOps(Protocol):
    """The side effects of this module; :class:`SystemDiskOps` on the node."""

    def partitions(self) -> list[Partition]: ...

    def open(self, path: str, write: bool = False) -> BinaryIO:
        """Open a disk or partition for ``os.pread``/``os.pwrite`` (unbuffered)."""
        ...

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        """Run a tool (mkfs.ext4, e2fsck, resize2fs) to completion, capturing its output."""
        ...

    def resize_partition(self, disk: str, number: int, start: int, length: int) -> None:
        """Tell the kernel partition ``number`` of ``disk`` now spans ``length`` bytes from ``start``."""
        ...

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str | None) -> None: ...

    def is_mounted(self, device: str) -> bool: ...


# --- finding partitions ---------------------------------------------------------------------------


def _uevent(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _gpt_names(disk: Path) -> dict[int, str]:
    """Partition names from the disk's own GPT: for partitions the kernel created without one."""
    try:
        with open(disk, "rb") as f:
            return {p.number: p.name for p in gpt.read_gpt(f).partitions}
    except (OSError, gpt.GptError):
        return {}


def find_partitions(root: Path | str = Path("/"), disks: Collection[str] | None = None) -> list[Partition]:
    """Every partition in ``root/sys/class/block`` with its GPT name, sorted by device name.

    The name comes from ``PARTNAME`` in the uevent, which the kernel's GPT parser sets. A
    partition added with BLKPG (partx, or a kernel without a GPT parser) has none: its name is
    then read from the disk's GPT. ``disks`` limits the search to those disk names (``vda``).
    """
    root = Path(root)
    sysblock = root / "sys/class/block"
    try:
        entries = sorted(sysblock.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    names: dict[str, dict[int, str]] = {}
    found = []
    for entry in entries:
        event = _uevent(entry / "uevent")
        if event.get("DEVTYPE") != "partition":
            continue
        disk = entry.resolve().parent.name
        if disks is not None and disk not in disks:
            continue
        number = int(event.get("PARTN", "0") or 0)
        start = _read_int(entry / "start")
        size = _read_int(entry / "size")
        if not number or start is None or size is None:
            continue
        name = event.get("PARTNAME")
        if name is None:
            if disk not in names:
                names[disk] = _gpt_names(root / "dev" / disk)
            name = names[disk].get(number)
        if not name:
            continue
        device = str(root / "dev" / event.get("DEVNAME", entry.name))
        found.append(Partition(name, device, str(root / "dev" / disk), number, start, size))
    return found


def pick(parts: Sequence[Partition], name: str, prefer_disk: str | None = None) -> Partition | None:
    """The partition called ``name``, on ``prefer_disk`` (the boot disk) when several disks have one."""
    matches = [p for p in parts if p.name == name]
    preferred = [p for p in matches if p.disk == prefer_disk]
    return (preferred or matches)[0] if matches else None


# --- probing --------------------------------------------------------------------------------------

# (offset, magic, what) for the signatures worth naming in a refusal; any non-zero byte refuses.
SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"XFSB", "an xfs filesystem"),
    (0x10040, b"_BHRfS_M", "a btrfs filesystem"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (512, b"LABELONE", "an LVM physical volume"),
    (0x1000, b"\xfc\x4e\x2b\xa9", "a Linux RAID member"),
    (4086, b"SWAPSPACE2", "swap space"),
    (0, b"hsqs", "a squashfs image"),
    (0x8001, b"CD001", "an ISO 9660 filesystem"),
    (3, b"NTFS    ", "an NTFS filesystem"),
    (54, b"FAT", "a FAT filesystem"),
    (82, b"FAT32", "a FAT filesystem"),
)


@dataclass(frozen=True)
class ExtSuperblock:
    label: str
    block_size: int
    blocks: int
    journal: bool

    @property
    def size(self) -> int:
        return self.block_size * self.blocks


def parse_ext_superblock(head: bytes) -> ExtSuperblock | None:
    """The bits of an ext2/3/4 superblock we need, or None without the 0xEF53 magic."""
    sb = head[EXT_SUPERBLOCK : EXT_SUPERBLOCK + 1024]
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 56)[0] != EXT_MAGIC:
        return None
    blocks_lo, log_block = struct.unpack_from("<I", sb, 4)[0], struct.unpack_from("<I", sb, 24)[0]
    compat, incompat = struct.unpack_from("<II", sb, 92)
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & EXT_INCOMPAT_64BIT else 0
    label = sb[120:136].split(b"\0", 1)[0].decode("utf-8", "replace")
    return ExtSuperblock(label, 1024 << min(log_block, 16), blocks_hi << 32 | blocks_lo, bool(compat & 4))


def probe(head: bytes) -> Probe:
    """Classify the first MiB of a partition: blank, our ext4, or something that is not ours."""
    sb = parse_ext_superblock(head)
    if sb is not None:
        kind = "ext4" if sb.journal else "ext2"
        if sb.label == EPHEMERAL:
            return Probe(Content.OURS, f"{kind} {EPHEMERAL}", sb.size)
        return Probe(Content.FOREIGN, f"an {kind} filesystem labelled {sb.label!r}")
    if not any(head):
        return Probe(Content.BLANK, "blank")
    for offset, magic, what in SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return Probe(Content.FOREIGN, what)
    return Probe(Content.FOREIGN, "data of an unknown kind")


# --- the steps ------------------------------------------------------------------------------------


def _read(ops: DiskOps, path: str, offset: int, length: int) -> bytes:
    with ops.open(path) as f:
        return os.pread(f.fileno(), length, offset)


def _output(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = (proc.stderr or b"").decode(errors="replace").strip() or (proc.stdout or b"").decode(
        errors="replace"
    ).strip()
    return text.splitlines()[-1] if text else "no output"


def grow_partition(ops: DiskOps, part: Partition, log: Callable[[str], None]) -> tuple[Partition, bool]:
    """Grow the GPT to the disk's end and the kernel's view of ``part``; returns it and whether it grew.

    A table we cannot validate is left alone (logged): the partition keeps its size.
    """
    moved = False
    try:
        with ops.open(part.disk, write=True) as f:
            result = gpt.grow(f, part.name)
            table = gpt.read_gpt(f)
    except gpt.GptError as exc:
        log(f"disks: not growing {part.disk}: its partition table is not usable ({exc})")
        return part, False
    except OSError as exc:
        log(f"disks: not growing {part.disk}: {exc}")
        return part, False
    if result.moved:
        moved = True
        log(f"disks: moved the backup GPT of {part.disk} to the end of the disk")
    entry = next((p for p in table.partitions if p.number == part.number), None)
    if entry is None or entry.name != part.name:
        return part, moved
    start = entry.first_lba * table.sector
    length = (entry.last_lba - entry.first_lba + 1) * table.sector
    if start != part.start * SECTOR or length <= part.size_bytes:
        return part, moved
    try:
        ops.resize_partition(part.disk, part.number, start, length)
    except OSError as exc:
        log(f"disks: the kernel kept the old size of {part.device} ({exc}); the next boot uses the new one")
        return part, moved
    log(f"disks: {part.device} grown from {part.size_bytes // MiB} MiB to {length // MiB} MiB")
    return replace(part, size=length // SECTOR), True


def format_ephemeral(ops: DiskOps, part: Partition, log: Callable[[str], None]) -> None:
    log(f"disks: formatting blank {part.device} ({part.size_bytes // MiB} MiB) as ext4 {EPHEMERAL}")
    proc = ops.run(["mkfs.ext4", "-q", "-L", EPHEMERAL, part.device])
    if proc.returncode != 0:
        raise DiskError(
            f"mkfs.ext4 failed on {part.device} (exit {proc.returncode}: {_output(proc)}): "
            "check the disk, or reset the node"
        )


def check_ephemeral(
    ops: DiskOps, part: Partition, log: Callable[[str], None], force: bool = False
) -> str | None:
    """e2fsck per the module's policy (``force``: a full check, which resize2fs wants first).

    Returns the problem when errors remain (then /var is mounted read-only), else None.
    """
    proc = ops.run(["e2fsck", "-p", *(["-f"] if force else []), part.device])
    code = proc.returncode
    if code in (1, 2):
        log(f"disks: e2fsck corrected errors on {part.device}")
    if code < 4:
        return None
    log(f"disks: e2fsck -p left errors on {part.device} (exit {code}: {_output(proc)}); running e2fsck -f -y")
    proc = ops.run(["e2fsck", "-f", "-y", part.device])
    if proc.returncode < 4:
        log(f"disks: e2fsck -y repaired {part.device}; recovered files, if any, are in /var/lost+found")
        return None
    return (
        f"e2fsck cannot repair {part.device} (exit {proc.returncode}: {_output(proc)}): "
        "/var is mounted read-only; reset the node to reformat EPHEMERAL"
    )


def fs_size(ops: DiskOps, device: str) -> int:
    sb = parse_ext_superblock(_read(ops, device, 0, 2 * EXT_SUPERBLOCK))
    return sb.size if sb else 0


def resize_filesystem(ops: DiskOps, part: Partition, log: Callable[[str], None], size: int) -> int:
    """Offline ``resize2fs`` to the partition's size (after a forced e2fsck); returns the new size.

    Offline rather than online: online growth needs CAP_SYS_RESOURCE and the ext4 resize ioctl,
    offline needs neither, and growth is rare (a disk resized after the first boot).
    """
    proc = ops.run(["resize2fs", part.device])
    if proc.returncode != 0:
        log(
            f"disks: resize2fs failed on {part.device} (exit {proc.returncode}: {_output(proc)}); keeping its size"
        )
        return size
    new = fs_size(ops, part.device)
    log(f"disks: filesystem on {part.device} grown from {size // MiB} MiB to {new // MiB} MiB")
    return new


def make_layout(var: Path) -> None:
    """The directories and symlinks every boot expects under /var (idempotent)."""
    for rel, mode in VAR_LAYOUT:
        path = var / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    for rel, target in VAR_SYMLINKS:
        path = var / rel
        if not path.exists() and not path.is_symlink():
            path.symlink_to(target)


def prepare_ephemeral(
    ops: DiskOps,
    log: Callable[[str], None],
    *,
    target: Path | str = VAR,
    prefer_disk: str | None = None,
) -> EphemeralResult:
    """Find, grow, format if blank, check and mount EPHEMERAL on ``target``; see the module doc.

    Returns ``mounted=False`` without a device when there is no EPHEMERAL partition (a live
    ISO) and with a ``problem`` when the partition holds something that is not ours. Raises
    :class:`DiskError` when mkfs or the mount fails.
    """
    target = Path(target)
    part = pick(ops.partitions(), EPHEMERAL, prefer_disk)
    if part is None:
        log(f"disks: no {EPHEMERAL} partition")
        return EphemeralResult(device=None, mounted=False, problem=f"no {EPHEMERAL} partition")
    found = probe(_read(ops, part.device, 0, PROBE_BYTES))
    if found.content is Content.FOREIGN:
        refusal = (
            f"{part.device} (GPT name {EPHEMERAL}) holds {found.what}, not our filesystem: it was left "
            "untouched and /var is not on it; wipe it (reset the node) to let the next boot format it"
        )
        log(f"disks: {refusal}")
        return EphemeralResult(device=part.device, mounted=False, problem=refusal)
    part, grown = grow_partition(ops, part, log)
    formatted = found.content is Content.BLANK
    problem: str | None = None
    if formatted:
        format_ephemeral(ops, part, log)
        size = fs_size(ops, part.device)
    else:
        size = found.fs_bytes
        needs_resize = part.size_bytes - size >= RESIZE_SLACK
        problem = check_ephemeral(ops, part, log, force=needs_resize)
        if problem is None and needs_resize:
            new = resize_filesystem(ops, part, log, size)
            grown, size = grown or new > size, new
    flags = MOUNT_FLAGS | (syscalls.MS_RDONLY if problem else 0)
    target.mkdir(parents=True, exist_ok=True)
    try:
        ops.mount(part.device, str(target), "ext4", flags, MOUNT_DATA)
    except OSError as exc:
        raise DiskError(
            f"cannot mount {part.device} on {target} ({exc}): reset the node to reformat it"
        ) from exc
    if problem is None:
        make_layout(target)
    else:
        log(f"disks: {problem}")
    log(f"disks: {part.device} mounted on {target} ({size // MiB} MiB{', read-only' if problem else ''})")
    return EphemeralResult(
        device=part.device,
        mounted=True,
        formatted=formatted,
        grown=grown,
        size=size,
        read_only=problem is not None,
        problem=problem,
    )


def wipe_ephemeral(ops: DiskOps, log: Callable[[str], None], prefer_disk: str | None = None) -> str | None:
    """Zero the first and last MiB of EPHEMERAL so the next boot formats it (Reset).

    Unmount /var first: a mounted ext4 writes its superblock back on unmount. Returns the
    device wiped, or None when there is no EPHEMERAL partition.
    """
    part = pick(ops.partitions(), EPHEMERAL, prefer_disk)
    if part is None:
        return None
    if ops.is_mounted(part.device):
        raise DiskError(f"{part.device} is still mounted: unmount /var before wiping {EPHEMERAL}")
    size = part.size_bytes
    zeros = bytes(min(MiB, size))
    with ops.open(part.device, write=True) as f:
        for offset in sorted({0, max(0, size - len(zeros))}):
            os.pwrite(f.fileno(), zeros, offset)
        os.fsync(f.fileno())
    log(f"disks: wiped {part.device}; the next boot formats it")
    return part.device


# --- the real thing -------------------------------------------------------------------------------

BLKPG = 0x1269  # _IO(0x12, 105)
BLKPG_RESIZE_PARTITION = 3


class _BlkpgPartition(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_longlong),
        ("length", ctypes.c_longlong),
        ("pno", ctypes.c_int),
        ("devname", ctypes.c_char * 64),
        ("volname", ctypes.c_char * 64),
    ]


class _BlkpgIoctlArg(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_int),
        ("flags", ctypes.c_int),
        ("datalen", ctypes.c_int),
        ("data", ctypes.c_void_p),
    ]


def blkpg_resize(disk_fd: int, number: int, start: int, length: int) -> None:
    """BLKPG_RESIZE_PARTITION on an open whole disk: works while other partitions are mounted."""
    part = _BlkpgPartition(start=start, length=length, pno=number)
    arg = _BlkpgIoctlArg(
        op=BLKPG_RESIZE_PARTITION, flags=0, datalen=ctypes.sizeof(part), data=ctypes.addressof(part)
    )
    fcntl.ioctl(disk_fd, BLKPG, arg)


class SystemDiskOps:
    """:class:`DiskOps` on a live system: sysfs, block devices, ``mount(2)`` and a tool runner.

    On the node pass ``run=functools.partial(supervisor.run, reaper)`` (PID 1 must not use
    subprocess.run); ``root`` and ``disks`` exist for the host tests on loop devices.
    """

    def __init__(
        self,
        run: Runner,
        *,
        root: Path | str = Path("/"),
        disks: Collection[str] | None = None,
        mount: Callable[[str, str, str | None, int, str | None], None] = syscalls.mount,
    ) -> None:
        self._run = run
        self.root = Path(root)
        self.disks = disks
        self._mount = mount

    def partitions(self) -> list[Partition]:
        return find_partitions(self.root, self.disks)

    def open(self, path: str, write: bool = False) -> BinaryIO:
        return open(path, "r+b" if write else "rb", buffering=0)

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        tool = shutil.which(argv[0], path=f"{TOOL_PATH}:{os.environ.get('PATH', '')}")
        if tool is None:
            raise DiskError(f"{argv[0]} is missing from the image: it must ship in the root filesystem")
        return self._run([tool, *argv[1:]])

    def resize_partition(self, disk: str, number: int, start: int, length: int) -> None:
        fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
        try:
            blkpg_resize(fd, number, start, length)
        finally:
            os.close(fd)

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
        self._mount(source, target, fstype, flags, data)

    def is_mounted(self, device: str) -> bool:
        try:
            rdev = os.stat(device).st_rdev
        except OSError:
            return False
        wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
        with contextlib.suppress(OSError):
            for line in (self.root / "proc/self/mountinfo").read_text().splitlines():
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted:
                    return True
        return False


def root_disk() -> str | None:
    """The disk holding the root file system (``/dev/vda``), preferred when several have EPHEMERAL."""
    st = os.stat("/")
    try:
        part = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}").resolve()
    except OSError:
        return None
    return f"/dev/{part.parent.name}" if (part / "partition").exists() else None
