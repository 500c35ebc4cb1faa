"""Filesystem images built as plain files (no mount, no loop device, no root), reproducibly."""

from __future__ import annotations

import os
from pathlib import Path

from bakery.errors import BakeError
from bakery.tools import run


def splice(disk: Path, image: Path, offset: int, limit: int) -> None:
    """Copy ``image`` into ``disk`` at ``offset``, skipping zero blocks so the disk stays sparse."""
    size = image.stat().st_size
    if size > limit:
        raise BakeError(f"{image.name} ({size >> 20} MiB) does not fit its partition ({limit >> 20} MiB)")
    block = 1 << 16
    with open(image, "rb") as src, open(disk, "r+b") as dst:
        pos = 0
        while chunk := src.read(block):
            if chunk.count(0) != len(chunk):
                dst.seek(offset + pos)
                dst.write(chunk)
            pos += len(chunk)


def make_esp(path: Path, size: int, efi_binary: Path, volume_id: str, epoch: int) -> None:
    """FAT EFI system partition holding only GRUB's EFI binary (the kernel stays on BOOT)."""
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}
    run(["mkfs.vfat", "--invariant", "-i", volume_id, "-n", "EFI", "-C", path, str(size // 1024)], env=env,
        what="mkfs.vfat")  # fmt: skip
    run(["mmd", "-i", path, "::/EFI", "::/EFI/BOOT"], env=env, what="mmd")
    os.utime(efi_binary, (epoch, epoch))
    run(["mcopy", "-m", "-i", path, efi_binary, "::/EFI/BOOT/BOOTX64.EFI"], env=env, what="mcopy")


def make_boot_fs(path: Path, size: int, staging: Path, fs_uuid: str, hash_seed: str, epoch: int) -> None:
    """ext4 BOOT filesystem (GRUB and pygrub both read it) populated from ``staging``."""
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(staging, (epoch, epoch))
    run(["mkfs.ext4", "-q", "-F", "-L", "BOOT", "-U", fs_uuid, "-E", f"hash_seed={hash_seed},root_owner=0:0",
         "-O", "^has_journal,^metadata_csum_seed", "-m", "0", "-d", staging, path, f"{size // 1024}k"],
        env={"E2FSPROGS_FAKE_TIME": str(epoch)}, what="mkfs.ext4")  # fmt: skip
    # mkfs.ext4 -d copies each file's ctime (utime cannot set it) and reading a directory moves its
    # atime: pin all three times afterwards.
    paths = [
        "/",
        "/lost+found",
        *sorted(
            "/" + str(Path(d, n).relative_to(staging))
            for d, dirs, files in os.walk(staging)
            for n in dirs + files
        ),
    ]
    script = path.with_suffix(".debugfs")
    script.write_text(
        "".join(
            f"set_inode_field {p} {field} @{epoch}\n" for p in paths for field in ("ctime", "atime", "mtime")
        )
    )
    run(["debugfs", "-w", "-f", script, path], env={"E2FSPROGS_FAKE_TIME": str(epoch)}, what="debugfs")
    script.unlink()


def make_squashfs(tree: Path, out: Path, epoch: int, level: int) -> None:
    """Read-only root: zstd at ``level``, root-owned, fixed timestamps (mksquashfs is reproducible by default).

    No fragments: by default the many small files (the ``.pyc`` the init and osd import at boot)
    are packed together into shared 256 KiB blocks, and the kernel keeps only three such blocks
    decompressed, so imports that hop between packages decompress the same blocks over and over.
    Each file in its own blocks costs ~1% of the root's size and ~2 s of the init's start under TCG.
    """
    run(["mksquashfs", tree, out, "-noappend", "-comp", "zstd", "-Xcompression-level", str(level), "-b", "256K",
         "-no-fragments", "-all-root", "-all-time", str(epoch), "-mkfs-time", str(epoch), "-no-xattrs", "-quiet",
         "-no-progress"],
        what="mksquashfs")  # fmt: skip
