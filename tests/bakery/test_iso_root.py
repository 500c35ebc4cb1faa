"""Stage 1's live-ISO root: ``talos.root=iso:LABEL/path`` parsing, finding the labelled iso9660
volume in a sysfs tree, and the loop device module (struct layouts, and a real bind + squashfs
mount on the host when it allows loop devices)."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from talos_os.init import loopdev, stage1, syscalls
from talos_os.init.stage1 import RootSpec
from talos_os.lib.fslabel import probe_label


def test_root_spec_partition_and_iso() -> None:
    assert stage1.parse_root(None) == RootSpec("ROOT-A")
    assert stage1.parse_root("ROOT-B") == RootSpec("ROOT-B")
    spec = stage1.parse_root("iso:TALOS_1A2B3C4D/talos/root.sqsh")
    assert spec == RootSpec("TALOS_1A2B3C4D", "talos/root.sqsh")
    assert spec.what == "iso9660 volume labelled TALOS_1A2B3C4D"
    assert stage1.parse_root("iso:X//a//b.sqsh").iso_path == "a/b.sqsh"
    for bad in ("iso:", "iso:LABEL", "iso:LABEL/", "iso:/root.sqsh", "iso:L/../etc/x"):
        with pytest.raises(ValueError, match="is not iso:LABEL/path"):
            stage1.parse_root(bad)


def _iso(path: Path, label: str) -> None:
    pvd = bytearray(2048)
    pvd[0:6] = b"\x01CD001"
    pvd[40:72] = label.encode().ljust(32, b" ")
    path.write_bytes(bytes(16 * 2048) + bytes(pvd))


def _block(sys_block: Path, name: str, devtype: str, size: int = 1000) -> None:
    (sys_block / name).mkdir(parents=True)
    (sys_block / name / "uevent").write_text(f"DEVNAME={name}\nDEVTYPE={devtype}\n")
    (sys_block / name / "size").write_text(f"{size}\n")


def test_iso9660_volume_is_found_by_label(tmp_path: Path) -> None:
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    _block(sys_block, "sr0", "disk")
    _iso(dev / "sr0", "TALOS_OLD")
    _block(sys_block, "sr1", "disk", size=0)  # empty drive
    _block(sys_block, "sdb", "disk")
    _iso(dev / "sdb", "TALOS_NEW")  # the ISO written to a USB stick
    _block(sys_block, "sdb1", "partition")
    _iso(dev / "sdb1", "TALOS_NEW")
    _block(sys_block, "vda", "disk")
    (dev / "vda").write_bytes(bytes(40000))
    _block(sys_block, "loop0", "disk")
    _iso(dev / "loop0", "TALOS_NEW")
    assert probe_label(dev / "sr0") == ("iso9660", "TALOS_OLD")
    assert probe_label(dev / "vda") is None
    assert probe_label(dev / "missing") is None
    assert stage1.find_iso9660("TALOS_NEW", sys_block, str(dev)) == f"{dev}/sdb"
    assert stage1.find_iso9660("TALOS_OLD", sys_block, str(dev)) == f"{dev}/sr0"
    assert stage1.find_iso9660("TALOS_NONE", sys_block, str(dev)) is None
    assert stage1.find_iso9660("TALOS_OLD", tmp_path / "nosys", str(dev)) is None


def test_loop_structs_match_linux_loop_h() -> None:
    assert loopdev.INFO64.size == 232 and loopdev.CONFIG.size == 304
    info = loopdev.pack_info64("/run/talos-iso/talos/root.sqsh", loopdev.LO_FLAGS_READ_ONLY, offset=4096)
    assert info[24:32] == (4096).to_bytes(8, "little")  # lo_offset after device, inode, rdevice
    assert info[52:56] == (1).to_bytes(4, "little")  # lo_flags after number, encrypt type, key size
    assert info[56:88].rstrip(b"\0") == b"/run/talos-iso/talos/root.sqsh"
    parsed = loopdev.unpack_info64(info)
    assert (parsed.offset, parsed.flags, parsed.file_name) == (4096, 1, "/run/talos-iso/talos/root.sqsh")
    assert (
        len(loopdev.pack_info64("/" + "x" * 200, 0)[56:120].rstrip(b"\0")) == 63
    )  # name truncated, NUL kept
    cfg = loopdev.pack_config(7, "/f", loopdev.LO_FLAGS_AUTOCLEAR, block_size=4096)
    assert cfg[:8] == (7).to_bytes(4, "little") + (4096).to_bytes(4, "little")
    assert cfg[8:240] == loopdev.pack_info64("/f", loopdev.LO_FLAGS_AUTOCLEAR) and cfg[240:] == bytes(64)


def _loop_usable() -> bool:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        return False
    try:
        fd = os.open("/dev/loop-control", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


needs_loop = pytest.mark.skipif(not _loop_usable(), reason="needs root and /dev/loop-control (loop devices)")


@pytest.fixture
def squashfs(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin/init").write_text("stage 2\n")
    out = tmp_path / "root.sqsh"
    subprocess.run(["mksquashfs", str(tree), str(out), "-quiet", "-no-progress", "-all-root"], check=True)
    return out


def _mount_and_read(device: str, target: Path) -> str:
    target.mkdir()
    syscalls.mount(device, str(target), "squashfs", syscalls.MS_RDONLY | syscalls.MS_NODEV)
    try:
        return (target / "sbin/init").read_text()
    finally:
        syscalls.umount(str(target))


@needs_loop
def test_loop_bind_mount_and_autoclear(squashfs: Path, tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    with loopdev.attach(squashfs) as device:
        info = loopdev.status(device)
        assert info.file_name == str(squashfs)[:63]  # the kernel keeps 63 bytes; sysfs has it all
        assert Path(f"/sys/class/block/{Path(device).name}/loop/backing_file").read_text().strip() == str(
            squashfs
        )
        assert info.flags & loopdev.LO_FLAGS_READ_ONLY and info.flags & loopdev.LO_FLAGS_AUTOCLEAR
        target.mkdir()
        syscalls.mount(device, str(target), "squashfs", syscalls.MS_RDONLY | syscalls.MS_NODEV)
    try:
        assert loopdev.status(device).file_name == str(squashfs)[:63], "the mount keeps the device bound"
        assert (target / "sbin/init").read_text() == "stage 2\n"
    finally:
        syscalls.umount(str(target))
    with pytest.raises(OSError) as exc:
        loopdev.status(device)
    assert exc.value.errno == errno.ENXIO, "autoclear frees the device with the last user"


@needs_loop
def test_loop_falls_back_to_set_fd_on_kernels_without_loop_configure(squashfs: Path, tmp_path: Path) -> None:
    calls: list[int] = []

    def old_kernel(fd: int, request: int, arg: Any) -> Any:
        calls.append(request)
        if request == loopdev.LOOP_CONFIGURE:
            raise OSError(errno.EINVAL, "Invalid argument")
        return fcntl.ioctl(fd, request, arg)

    with loopdev.attach(squashfs, ioctl=old_kernel) as device:
        assert loopdev.status(device).flags & loopdev.LO_FLAGS_AUTOCLEAR
        assert _mount_and_read(device, tmp_path / "mnt") == "stage 2\n"
    assert calls == [loopdev.LOOP_CTL_GET_FREE, loopdev.LOOP_CONFIGURE, loopdev.LOOP_SET_FD,
                     loopdev.LOOP_SET_STATUS64]  # fmt: skip


@needs_loop
def test_loop_left_unused_is_freed(squashfs: Path) -> None:
    with loopdev.attach(squashfs) as device:
        pass
    with pytest.raises(OSError):
        loopdev.status(device)
