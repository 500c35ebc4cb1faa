"""EPHEMERAL preparation with the real mkfs.ext4/e2fsck on image files; sysfs lookup on fake trees."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from talos_os.init import disks, supervisor
from talos_os.init.disks import Content, Partition

MiB = 1 << 20


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def dumpe2fs(path: Path | str) -> dict[str, str]:
    out = sh("dumpe2fs", "-h", str(path))
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FileOps:
    """DiskOps over files: EPHEMERAL is a standalone image file, mounts are recorded, tools are real."""

    def __init__(self, tmp: Path, size: int = 64 * MiB, name: str = "EPHEMERAL") -> None:
        # A disk whose GPT already spans it, so nothing grows; the partition is its own file.
        self.disk = sparse(tmp / "disk.img", size + 2 * MiB)
        sh("sgdisk", "-o", "-n", f"1:2048:{2048 + size // 512 - 1}", "-c", f"1:{name}", str(self.disk))
        self.part = sparse(tmp / "part.img", size)
        self.name = name
        self.mounts: list[tuple[str, str, str, int, str | None]] = []
        self.ran: list[list[str]] = []
        self.codes: dict[str, list[int]] = {}  # tool -> forced exit codes (tests of the policy)

    def partitions(self) -> list[Partition]:
        size = self.part.stat().st_size // 512
        return [Partition(self.name, str(self.part), str(self.disk), 1, 2048, size)]

    def open(self, path: str, write: bool = False) -> BinaryIO:
        return open(path, "r+b" if write else "rb", buffering=0)

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        self.ran.append(list(argv))
        forced = self.codes.get(argv[0])
        if forced:
            return subprocess.CompletedProcess(list(argv), forced.pop(0), b"", b"forced failure")
        return supervisor.run(supervisor.WaitReaper(), argv)

    def resize_partition(self, disk: str, number: int, start: int, length: int) -> None:
        raise AssertionError("nothing should grow here")

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
        self.mounts.append((source, target, fstype, flags, data))

    def is_mounted(self, device: str) -> bool:
        return any(m[0] == device for m in self.mounts)


def test_blank_partition_is_formatted_and_mounted(tmp_path: Path) -> None:
    ops = FileOps(tmp_path)
    lines: list[str] = []
    var = tmp_path / "var"
    result = disks.prepare_ephemeral(ops, lines.append, target=var)
    assert result.mounted and result.formatted and not result.grown and not result.read_only
    assert result.device == str(ops.part) and result.problem is None
    info = dumpe2fs(ops.part)
    assert info["Filesystem volume name"] == "EPHEMERAL"
    assert int(info["Block count"]) * int(info["Block size"]) == result.size == 64 * MiB
    assert ops.mounts == [(str(ops.part), str(var), "ext4", disks.MOUNT_FLAGS, "nodelalloc")]
    assert disks.MOUNT_FLAGS & (disks.syscalls.MS_NOSUID | disks.syscalls.MS_NODEV)
    assert (var / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (var / "lib/containerd").is_dir() and os.readlink(var / "run") == "/run"
    assert any("formatting blank" in line for line in lines)


def test_second_boot_checks_instead_of_formatting(tmp_path: Path) -> None:
    ops = FileOps(tmp_path)
    disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    uuid_before = dumpe2fs(ops.part)["Filesystem UUID"]
    ops.ran.clear()
    result = disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    assert result.mounted and not result.formatted
    assert [argv[0] for argv in ops.ran] == ["e2fsck"]
    assert dumpe2fs(ops.part)["Filesystem UUID"] == uuid_before


def corrupt_root_inode(image: Path) -> None:
    subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input=b"clri <2>\nssv state 0\n", check=True)


def test_errors_preen_cannot_fix_are_repaired_with_y(tmp_path: Path) -> None:
    ops = FileOps(tmp_path)
    disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    corrupt_root_inode(ops.part)
    ops.ran.clear()
    lines: list[str] = []
    result = disks.prepare_ephemeral(ops, lines.append, target=tmp_path / "var")
    assert [a[:3] for a in ops.ran] == [["e2fsck", "-p", str(ops.part)], ["e2fsck", "-f", "-y"]]
    assert result.mounted and not result.read_only and not result.formatted
    assert any("e2fsck -y repaired" in line for line in lines)
    assert subprocess.run(["e2fsck", "-n", "-f", str(ops.part)], capture_output=True).returncode == 0


def test_unrepairable_filesystem_is_mounted_read_only(tmp_path: Path) -> None:
    ops = FileOps(tmp_path)
    disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    ops.mounts.clear()
    ops.codes["e2fsck"] = [4, 4]  # what e2fsck answers when it cannot repair (exit 4 twice)
    result = disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    assert result.mounted and result.read_only
    assert result.problem is not None and "read-only" in result.problem
    assert ops.mounts[0][3] & disks.syscalls.MS_RDONLY


def test_failing_mkfs_raises_a_clear_error(tmp_path: Path) -> None:
    ops = FileOps(tmp_path)
    ops.codes["mkfs.ext4"] = [1]
    with pytest.raises(disks.DiskError, match=r"mkfs.ext4 failed on .*part.img \(exit 1"):
        disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    assert ops.mounts == []


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: sh("mkfs.ext4", "-q", "-L", "data", str(p)), "an ext4 filesystem labelled 'data'"),
        (lambda p: sh("mkfs.vfat", str(p)), "a FAT filesystem"),
        (lambda p: sh("mkswap", str(p)), "swap space"),
        (lambda p: p.write_bytes(b"XFSB" + bytes(4096)), "an xfs filesystem"),
        (lambda p: p.write_bytes(bytes(300 * 1024) + b"\x01"), "data of an unknown kind"),
    ],
)
def test_foreign_content_is_never_formatted(
    tmp_path: Path, make: Callable[[Path], object], what: str
) -> None:
    ops = FileOps(tmp_path)
    make(ops.part)
    sparse_size = ops.part.stat().st_size
    if sparse_size < 64 * MiB:
        with open(ops.part, "r+b") as f:
            f.truncate(64 * MiB)
    before = digest(ops.part)
    lines: list[str] = []
    result = disks.prepare_ephemeral(ops, lines.append, target=tmp_path / "var")
    assert not result.mounted and result.device == str(ops.part)
    assert result.problem is not None and what in result.problem and "untouched" in result.problem
    assert ops.mounts == [] and ops.ran == []
    assert digest(ops.part) == before
    assert any(what in line for line in lines)


def test_wipe_makes_the_next_boot_format(tmp_path: Path) -> None:
    ops = FileOps(tmp_path)
    disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    with pytest.raises(disks.DiskError, match="still mounted"):
        disks.wipe_ephemeral(ops, print)
    ops.mounts.clear()  # "unmounted"
    assert disks.wipe_ephemeral(ops, print) == str(ops.part)
    assert disks.probe(ops.part.read_bytes()[: disks.PROBE_BYTES]).content is Content.BLANK
    with open(ops.part, "rb") as f:
        f.seek(-MiB, os.SEEK_END)
        assert not any(f.read())
    result = disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    assert result.formatted


def test_no_ephemeral_partition(tmp_path: Path) -> None:
    ops = FileOps(tmp_path, name="DATA")
    result = disks.prepare_ephemeral(ops, print, target=tmp_path / "var")
    assert result == disks.EphemeralResult(device=None, mounted=False, problem="no EPHEMERAL partition")
    assert disks.wipe_ephemeral(ops, print) is None
    assert ops.ran == [] and ops.mounts == []


# --- probing and the superblock -------------------------------------------------------------------


def test_probe_and_superblock_of_a_real_filesystem(tmp_path: Path) -> None:
    image = sparse(tmp_path / "fs.img", 48 * MiB)
    assert disks.probe(image.read_bytes()[: disks.PROBE_BYTES]) == disks.Probe(Content.BLANK, "blank")
    sh("mkfs.ext4", "-q", "-L", "EPHEMERAL", str(image))
    head = image.read_bytes()[: disks.PROBE_BYTES]
    sb = disks.parse_ext_superblock(head)
    info = dumpe2fs(image)
    assert sb is not None and sb.label == "EPHEMERAL" and sb.journal
    assert sb.blocks == int(info["Block count"]) and sb.block_size == int(info["Block size"])
    assert disks.probe(head) == disks.Probe(Content.OURS, "ext4 EPHEMERAL", 48 * MiB)


def test_probe_of_a_64bit_filesystem_reads_the_high_block_count() -> None:
    head = bytearray(4096)
    sb = 1024
    head[sb + 56 : sb + 58] = (0xEF53).to_bytes(2, "little")
    head[sb + 4 : sb + 8] = (5).to_bytes(4, "little")
    head[sb + 24 : sb + 28] = (2).to_bytes(4, "little")  # 4 KiB blocks
    head[sb + 96 : sb + 100] = (0x80).to_bytes(4, "little")  # INCOMPAT_64BIT
    head[sb + 0x150 : sb + 0x154] = (1).to_bytes(4, "little")
    head[sb + 120 : sb + 129] = b"EPHEMERAL"
    parsed = disks.parse_ext_superblock(bytes(head))
    assert parsed is not None and parsed.blocks == (1 << 32) + 5 and parsed.size == ((1 << 32) + 5) * 4096


# --- finding partitions ---------------------------------------------------------------------------


def fake_block(root: Path, disk: str, number: int, uevent: dict[str, str], start: int, size: int) -> None:
    """sysfs as the kernel lays it out: devices/.../DISK/PART and a class/block symlink to it."""
    name = uevent["DEVNAME"]
    real = root / "sys/devices/virtual/block" / disk / name
    real.mkdir(parents=True)
    (real / "uevent").write_text("".join(f"{k}={v}\n" for k, v in uevent.items()))
    (real / "start").write_text(f"{start}\n")
    (real / "size").write_text(f"{size}\n")
    link = root / "sys/class/block" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(real, link.parent))


def test_find_partitions_by_partname(tmp_path: Path) -> None:
    for number, name in ((1, "BOOT"), (2, "ROOT-A"), (3, "EPHEMERAL")):
        uevent = {"DEVNAME": f"vda{number}", "DEVTYPE": "partition", "PARTN": str(number), "PARTNAME": name}
        fake_block(tmp_path, "vda", number, uevent, 2048 * number, 4096)
    fake_block(tmp_path, "nvme0n1", 1, {"DEVNAME": "nvme0n1p1", "DEVTYPE": "partition", "PARTN": "1",
                                         "PARTNAME": "EPHEMERAL"}, 2048, 100)  # fmt: skip
    disk = tmp_path / "sys/devices/virtual/block/vda"
    (disk / "uevent").write_text("DEVNAME=vda\nDEVTYPE=disk\n")
    (tmp_path / "sys/class/block/vda").symlink_to("../../devices/virtual/block/vda")
    parts = disks.find_partitions(tmp_path)
    dev = str(tmp_path / "dev")
    assert [(p.name, p.device, p.disk, p.number) for p in parts] == [
        ("EPHEMERAL", f"{dev}/nvme0n1p1", f"{dev}/nvme0n1", 1),
        ("BOOT", f"{dev}/vda1", f"{dev}/vda", 1),
        ("ROOT-A", f"{dev}/vda2", f"{dev}/vda", 2),
        ("EPHEMERAL", f"{dev}/vda3", f"{dev}/vda", 3),
    ]
    assert parts[3].start == 6144 and parts[3].size_bytes == 4096 * 512
    assert disks.pick(parts, "EPHEMERAL") == parts[0]
    assert disks.pick(parts, "EPHEMERAL", prefer_disk=f"{dev}/vda") == parts[3]
    assert disks.find_partitions(tmp_path, disks={"vda"})[0].name == "BOOT"


def test_partition_without_partname_is_named_from_the_disk_gpt(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    image = sparse(tmp_path / "dev/loop7", 32 * MiB)
    sh("sgdisk", "-o", "-n", "1:0:+8M", "-c", "1:BOOT", "-n", "2:0:0", "-c", "2:EPHEMERAL", str(image))
    for number in (1, 2):
        fake_block(tmp_path, "loop7", number, {"DEVNAME": f"loop7p{number}", "DEVTYPE": "partition",
                                               "PARTN": str(number)}, 2048, 100)  # fmt: skip
    assert [p.name for p in disks.find_partitions(tmp_path)] == ["BOOT", "EPHEMERAL"]
