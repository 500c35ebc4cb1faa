"""Helpers for the upgrade tests: small fake bundles and a disk made of plain files."""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Iterator
from pathlib import Path

from talos_os.upgrade import bundle, grubenv


def fake_parts(tmp: Path, root_size: int = 300_000, tag: bytes = b"v2") -> dict[str, Path]:
    """A kernel with an x86 boot header, an initramfs and a squashfs-looking root."""
    kernel = bytearray(8192)
    kernel[0x202:0x206] = bundle.BZIMAGE_MAGIC
    kernel[-len(tag) :] = tag
    files = {"kernel": tmp / "vmlinuz", "initramfs": tmp / "initramfs.zst", "root": tmp / "root.sqsh"}
    files["kernel"].write_bytes(bytes(kernel))
    files["initramfs"].write_bytes(b"\x28\xb5\x2f\xfd" + tag * 1000)
    files["root"].write_bytes(bundle.SQUASHFS_MAGIC + struct.pack("<I", 1) + tag * (root_size // len(tag)))
    return files


def make_bundle(
    tmp: Path, version: str = "0.2.0", arch: str = "x86_64", args: str = "", root_size: int = 300_000
) -> Path:
    parts_dir = tmp / f"parts-{version}-{arch}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    files = fake_parts(parts_dir, root_size, version.encode())
    manifest = bundle.manifest_for(version, arch, "6.1.0-test", args, files)
    out = tmp / f"talos-{version}-{arch}.upgrade"
    with open(out, "wb") as f:
        bundle.create(f, manifest, files, 1704067200)
    return out


def tar_bytes(path: Path) -> bytes:
    return io.BytesIO(path.read_bytes()).getvalue()


class FileDisk:
    """SlotOps over plain files: ROOT-A/ROOT-B are files of a fixed size, BOOT is a directory."""

    def __init__(self, tmp: Path, root_size: int = 1 << 20) -> None:
        self.tmp = tmp
        self.roots = {}
        for slot in ("A", "B"):
            path = tmp / f"ROOT-{slot}"
            path.write_bytes(slot.encode() * root_size)
            self.roots[slot] = path
        self.boot_dir = tmp / "BOOT"
        (self.boot_dir / "boot/grub").mkdir(parents=True)
        for slot in ("A", "B"):
            (self.boot_dir / "boot" / slot).mkdir()
        (self.boot_dir / "boot/A/vmlinuz").write_bytes(b"old kernel")
        grubenv.write(
            self.boot_dir / "boot/grub/grubenv", {"saved_entry": "talos-A", "talos_A": "good:0.1.0"}
        )
        self.mounts: list[bool] = []

    def root_device(self, slot: str) -> Path:
        return self.roots[slot]

    def device_size(self, device: Path) -> int:
        return device.stat().st_size

    @contextlib.contextmanager
    def boot(self, writable: bool) -> Iterator[Path]:
        self.mounts.append(writable)
        yield self.boot_dir

    def env(self) -> dict[str, str]:
        return grubenv.read(self.boot_dir / "boot/grub/grubenv")
