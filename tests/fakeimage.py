"""Small images that look like talos-os images to ``platforms.image_facts`` (a GPT with our partition
names, an ext4 BOOT holding a grub.cfg whose slot A names a platform), made in milliseconds with
sgdisk and mke2fs instead of a bake."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bakery.gpt import read_partitions
from bakery.layout import DEFAULT_LAYOUT

MiB = 1 << 20
SIZES = {"EFI": 1, "BIOS": 1, "BOOT": 4, "ROOT-A": 1, "ROOT-B": 1, "EPHEMERAL": 0}  # MiB, 0: the rest


def make_image(path: Path, platform: str, *, size_mib: int = 16, fmt: str = "raw", grub: bool = True) -> Path:
    """A ``size_mib`` MiB image baked "for" ``platform``; ``fmt`` qcow2 converts it; ``grub`` False leaves
    BOOT without grub.cfg."""
    raw = path if fmt == "raw" else path.with_suffix(".raw-src")
    with open(raw, "wb") as f:
        f.truncate(size_mib * MiB)
    args = ["sgdisk", "-o"]
    for number, spec in enumerate(DEFAULT_LAYOUT, start=1):
        size = f"+{SIZES[spec.name]}M" if SIZES[spec.name] else "0"
        args += [
            "-n",
            f"{number}:0:{size}",
            "-t",
            f"{number}:{spec.type_code}",
            "-c",
            f"{number}:{spec.name}",
        ]
    subprocess.run([*args, str(raw)], check=True, capture_output=True)
    staging = path.parent / f".{path.name}.boot"
    (staging / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    if grub:
        (staging / "boot" / "grub" / "grub.cfg").write_text(
            "menuentry 'talos-os (A)' {\n"
            f"  linux /boot/A/vmlinuz console=ttyS0 talos.platform={platform} talos.root=ROOT-A\n"
            "  initrd /boot/A/initramfs.zst\n}\n"
        )
    boot_offset = next(p.offset for p in read_partitions(raw) if p.name == "BOOT")
    subprocess.run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-d",
            str(staging),
            "-E",
            f"offset={boot_offset}",
            str(raw),
            "4M",
        ],
        check=True,
        capture_output=True,
    )
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
        raw.unlink()
    return path
