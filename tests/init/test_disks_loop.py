"""EPHEMERAL for real on a loop device: GPT grow + BLKPG resize, mkfs, mount, online resize2fs, reboot.

The host kernel may lack a GPT parser (then ``partx -a`` adds the partitions with BLKPG and
their names come from the GPT itself, as :func:`disks.find_partitions` does); the node's kernel
names them in the uevent. Needs root and loop devices; skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from talos_os.init import disks, supervisor, syscalls
from talos_os.lib import gpt

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control") or shutil.which("partx") is None,
    reason="needs root, loop devices and partx",
)


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


@dataclass
class Loop:
    image: Path
    device: str

    @property
    def name(self) -> str:
        return Path(self.device).name

    def part(self, number: int) -> str:
        return f"{self.device}p{number}"

    def sysfs_size(self, number: int) -> int:
        return int(Path(f"/sys/class/block/{self.name}p{number}/size").read_text()) * 512

    def grow_backing_file(self, size: int) -> None:
        with open(self.image, "r+b") as f:
            f.truncate(size)
        sh("losetup", "-c", self.device)  # the kernel rereads the capacity, as after a disk resize


@contextlib.contextmanager
def loop_disk(image: Path) -> Iterator[Loop]:
    device = sh("losetup", "-f", "--show", str(image)).strip()
    loop = Loop(image, device)
    try:
        if not Path(f"/sys/class/block/{loop.name}p1").exists():
            sh("partx", "-a", device)
        yield loop
    finally:
        subprocess.run(["partx", "-d", device], capture_output=True)
        subprocess.run(["losetup", "-d", device], capture_output=True)


def unmount(target: Path) -> None:
    if os.path.ismount(target):
        syscalls.umount(str(target))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Loop]:
    """A 160 MiB image (BOOT + EPHEMERAL to its end) written to a 400 MiB disk."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(160 * MiB)
    sh("sgdisk", "-o", "-n", "1:0:+8M", "-c", "1:BOOT", "-n", "2:0:0", "-c", "2:EPHEMERAL", str(image))
    with open(image, "r+b") as f:
        f.truncate(400 * MiB)
    with loop_disk(image) as loop:
        try:
            yield loop
        finally:
            unmount(tmp_path / "var")


def ops_for(loop: Loop) -> disks.SystemDiskOps:
    return disks.SystemDiskOps(
        run=functools.partial(supervisor.run, supervisor.WaitReaper()), disks={loop.name}
    )


def dumpe2fs(device: str, field: str) -> int:
    out = sh("dumpe2fs", "-h", device)
    return next(int(line.split(":")[1]) for line in out.splitlines() if line.startswith(field + ":"))


def block_count(device: str) -> int:
    return dumpe2fs(device, "Block count")


def test_ephemeral_lifecycle_on_a_loop_disk(disk: Loop, tmp_path: Path) -> None:
    var = tmp_path / "var"
    ops = ops_for(disk)
    old_size = disk.sysfs_size(2)
    lines: list[str] = []

    # First boot: the GPT grows to the 400 MiB disk, the kernel learns the size, blank -> mkfs.
    first = disks.prepare_ephemeral(ops, lines.append, target=var)
    assert first.mounted and first.formatted and first.grown and first.device == disk.part(2)
    assert disk.sysfs_size(2) > old_size
    assert (disk.sysfs_size(2) + 2048 * 512) // MiB * MiB == disk.sysfs_size(
        2
    ) + 2048 * 512  # MiB aligned end
    assert "No problems found" in sh("sgdisk", "-v", disk.device)
    assert os.path.ismount(var) and ops.is_mounted(disk.part(2))
    assert first.size == disk.sysfs_size(2)  # formatted after the grow: already full size
    assert (var / "tmp").stat().st_mode & 0o7777 == 0o1777 and os.readlink(var / "run") == "/run"
    (var / "lib/survivor").write_text("still here")
    with pytest.raises(disks.DiskError, match="still mounted"):
        disks.wipe_ephemeral(ops, lines.append)
    syscalls.umount(str(var))

    # Reboot: nothing to grow or format; the data is still there.
    second = disks.prepare_ephemeral(ops, lines.append, target=var)
    assert second.mounted and not second.formatted and not second.grown
    assert (var / "lib/survivor").read_text() == "still here"
    syscalls.umount(str(var))

    # The disk is resized (qcow2 resize): GPT + partition grow, then resize2fs (offline) before the mount.
    blocks = block_count(disk.part(2))
    disk.grow_backing_file(600 * MiB)
    third = disks.prepare_ephemeral(ops, lines.append, target=var)
    assert third.mounted and third.grown and not third.formatted
    assert third.size > second.size and block_count(disk.part(2)) > blocks
    assert (
        third.size == block_count(disk.part(2)) * dumpe2fs(disk.part(2), "Block size")
        and disk.sysfs_size(2) - third.size < disks.RESIZE_SLACK
    )
    assert (var / "lib/survivor").read_text() == "still here"
    assert "No problems found" in sh("sgdisk", "-v", disk.device)
    syscalls.umount(str(var))
    assert subprocess.run(["e2fsck", "-n", "-f", disk.part(2)], capture_output=True).returncode == 0

    # Reset: wipe, and the next boot formats a fresh /var.
    assert disks.wipe_ephemeral(ops, lines.append) == disk.part(2)
    fourth = disks.prepare_ephemeral(ops, lines.append, target=var)
    assert fourth.formatted and not (var / "lib/survivor").exists()
    print("\n".join(lines))


def test_foreign_filesystem_on_a_loop_disk_is_left_alone(disk: Loop, tmp_path: Path) -> None:
    sh("mkfs.vfat", disk.part(2))
    with open(disk.image, "rb") as f:
        before = f.read()
    result = disks.prepare_ephemeral(ops_for(disk), print, target=tmp_path / "var")
    assert not result.mounted and result.problem is not None and "a FAT filesystem" in result.problem
    with open(disk.image, "rb") as f:  # not a byte changed: not even the GPT was grown
        assert f.read() == before
    assert not os.path.ismount(tmp_path / "var")


def test_gpt_grow_on_a_4k_sector_disk(tmp_path: Path) -> None:
    """4Kn disks (some NVMe): LBAs count 4096-byte sectors; sgdisk on a 4 KiB-sector loop device agrees."""
    image = tmp_path / "4k.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)

    def attach() -> str:
        return sh("losetup", "-f", "--show", "--sector-size", "4096", str(image)).strip()

    device = attach()
    try:
        sh("sgdisk", "-o", "-n", "1:0:+8M", "-c", "1:BOOT", "-n", "2:0:0", "-c", "2:EPHEMERAL", device)
    finally:
        sh("losetup", "-d", device)
    with open(image, "r+b") as f:
        f.truncate(128 * MiB)
    device = attach()
    try:
        with open(device, "r+b", buffering=0) as f:
            result = gpt.grow(f)
        assert result.sector == 4096 and result.partition is not None
        total = 128 * MiB // 4096
        assert result.partition.last_lba == (total - 6 + 1) // 256 * 256 - 1  # 1 MiB = 256 sectors
        assert "No problems found" in sh("sgdisk", "-v", device)
    finally:
        sh("losetup", "-d", device)
