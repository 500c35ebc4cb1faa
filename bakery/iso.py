"""A live ISO from a baked image: GRUB boots it under BIOS and UEFI (El Torito), stage 1 mounts the
squashfs file on it through a loop device (``talos.root=iso:LABEL/talos/root.sqsh``).

Everything comes out of the raw image (kernel, initramfs and grub.cfg from the BOOT filesystem,
the squashfs from ROOT-A), so ``talos-bake iso --image PATH`` needs nothing but that file. The ISO
has no EPHEMERAL partition: the init keeps /var in memory.

The ISO also carries the rest of the image for the node's installer (``talos/image.json`` and
``talos/image.bin``, see :mod:`talos_os.install.image`), and its GRUB menu boots a disk that
holds this image's install (found by the BOOT filesystem's UUID) ahead of the live system, so a
machine that installed itself never loops back into the installer while the ISO stays inserted.
Built with pycdlib, with every date pinned to ``epoch`` so the same image gives the same ISO.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import sys
import time as _time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery import bootloader, gpt
from bakery.errors import BakeError
from bakery.filesystems import make_esp
from bakery.tools import run
from talos_os.install import image as install_image
from talos_os.lib.atomic import atomic_path

ROOT_PATH = "talos/root.sqsh"
PAD_BYTES = 300 << 10
# part_gpt, ext2 and search_fs_uuid find an installed disk's BOOT filesystem; loadenv reads its grubenv.
BIOS_MODULES = ["biosdisk", "iso9660", "search", "search_label", "configfile", "normal", "linux", "echo", "test",
                "serial", "terminal", "part_gpt", "ext2", "search_fs_uuid", "loadenv"]  # fmt: skip
EFI_MODULES = ["iso9660", "fat", "part_gpt", "search", "search_label", "configfile", "normal", "linux", "echo",
               "test", "serial", "terminal", "efi_gop", "ext2", "search_fs_uuid", "loadenv"]  # fmt: skip
EXT_MAGIC = 0xEF53
SQUASHFS_MAGIC = b"hsqs"
_LINUX_A = re.compile(r"^\s*linux\s+/boot/A/vmlinuz\s+(.*?)\s*$", re.MULTILINE)
_ROOT_WORD = re.compile(r"(?<!\S)talos\.root=\S*")


@dataclass(frozen=True)
class IsoSources:
    """What the ISO carries, taken out of a baked image."""

    kernel: Path
    initramfs: Path
    squashfs: Path
    cmdline: str  # slot A's command line as baked (talos.root=ROOT-A)
    image_map: Path | None = None  # talos/image.json: the installer's map of the raw image
    image_data: Path | None = None  # talos/image.bin: the image's bytes outside the squashfs
    boot_uuid: str | None = field(default=None)  # the BOOT filesystem's UUID: an installed disk has it


def volume_label(sources: IsoSources) -> str:
    """``TALOS_<8 hex>`` from the contents: two different ISOs in one machine never share a label."""
    h = hashlib.sha256()
    for path in (sources.kernel, sources.initramfs, sources.squashfs):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    h.update(sources.cmdline.encode())
    return "TALOS_" + h.hexdigest()[:8].upper()


def live_cmdline(cmdline: str, label: str, root_path: str = ROOT_PATH) -> str:
    """The baked command line with ``talos.root=`` pointing at the squashfs file on the ISO."""
    word = f"talos.root=iso:{label}/{root_path}"
    replaced, count = _ROOT_WORD.subn(word, cmdline)
    return replaced if count else f"{cmdline} {word}"


def boot_fs_uuid(superblock: bytes) -> str | None:
    """The UUID of an ext2/3/4 filesystem from its superblock (the 1 KiB at offset 1024), else None."""
    if len(superblock) < 0x78 or struct.unpack_from("<H", superblock, 0x38)[0] != EXT_MAGIC:
        return None
    return str(uuid.UUID(bytes=bytes(superblock[0x68:0x78])))


def installed_entry(boot_uuid: str) -> str:
    """grub.cfg lines that make a disk holding this image's install (its BOOT filesystem) the
    default entry: its own grub.cfg then boots it, so the ISO never runs the installer again."""
    return (
        f"if search --no-floppy --fs-uuid --set=installed {boot_uuid}; then\n"
        '    set default="talos-os (installed disk)"\n'
        '    menuentry "talos-os (installed disk)" {\n'
        "        set root=$installed\n"
        "        set prefix=($root)/boot/grub\n"
        "        configfile ($root)/boot/grub/grub.cfg\n"
        "    }\n"
        "fi\n"
    )


def early_config(label: str) -> str:
    """Embedded in both GRUB images: find the ISO by its volume label and read its grub.cfg."""
    return (
        f"search --no-floppy --label --set=root {label}\n"
        "set prefix=($root)/boot/grub\n"
        "configfile ($root)/boot/grub/grub.cfg\n"
    )


def _copy_range(src: Path, offset: int, length: int, dest: Path) -> None:
    """Copy ``length`` bytes of ``src`` from ``offset``, leaving zero blocks as holes."""
    block = 1 << 20
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fin.seek(offset)
        left = length
        while left:
            chunk = fin.read(min(block, left))
            if not chunk:
                raise BakeError(f"{src} ends early: the image is truncated")
            if chunk.count(0) == len(chunk):
                fout.seek(len(chunk), 1)
            else:
                fout.write(chunk)
            left -= len(chunk)
        fout.truncate(length)


def squashfs_length(header: bytes) -> int:
    """Bytes a squashfs occupies, from its superblock (``bytes_used``, padded to 4 KiB as mksquashfs does)."""
    if header[:4] != SQUASHFS_MAGIC:
        raise BakeError("the ROOT-A partition holds no squashfs: is this a talos-os image?")
    used: int = struct.unpack_from("<Q", header, 40)[0]
    return -(-used // 4096) * 4096


def sources_from_image(raw: Path, work: Path) -> IsoSources:
    """Take kernel, initramfs, command line and squashfs out of the baked image ``raw``."""
    parts = {p.name: p for p in gpt.read_partitions(raw)}
    for name in ("BOOT", "ROOT-A"):
        if name not in parts:
            raise BakeError(f"{raw} has no {name} partition: it is not a talos-os image")
    boot_fs = work / "boot.ext4"
    _copy_range(raw, parts["BOOT"].offset, parts["BOOT"].size, boot_fs)
    kernel, initramfs, cfg = work / "vmlinuz", work / "initramfs.zst", work / "grub.cfg"
    for inner, outer in (("/boot/A/vmlinuz", kernel), ("/boot/A/initramfs.zst", initramfs),
                         ("/boot/grub/grub.cfg", cfg)):  # fmt: skip
        run(["debugfs", "-R", f"dump {inner} {outer}", boot_fs], what="debugfs")
        if not outer.exists() or outer.stat().st_size == 0:
            raise BakeError(f"{raw}: the BOOT filesystem has no {inner}; bake the image again")
    boot_fs.unlink()
    m = _LINUX_A.search(cfg.read_text())
    if not m:
        raise BakeError(f"{raw}: grub.cfg has no entry for slot A; bake the image again")
    with open(raw, "rb") as f:
        f.seek(parts["ROOT-A"].offset)
        length = squashfs_length(f.read(96))
    if length > parts["ROOT-A"].size:
        raise BakeError(f"{raw}: the squashfs is larger than ROOT-A; the image is damaged")
    squashfs = work / "root.sqsh"
    _copy_range(raw, parts["ROOT-A"].offset, length, squashfs)
    with open(raw, "rb") as f:
        f.seek(parts["BOOT"].offset + 1024)
        boot_uuid = boot_fs_uuid(f.read(1024))
    image_data = work / "image.bin"
    image_map = work / "image.json"
    image_map.write_text(install_image.pack(raw, (parts["ROOT-A"].offset, length), image_data).to_json())
    return IsoSources(
        kernel=kernel,
        initramfs=initramfs,
        squashfs=squashfs,
        cmdline=bootloader.baked_cmdline(m.group(1), "A"),
        image_map=image_map,
        image_data=image_data,
        boot_uuid=boot_uuid,
    )


def grub_images(work: Path, label: str, epoch: int) -> tuple[Path, Path]:
    """(BIOS El Torito image = cdboot + core, UEFI El Torito image = FAT with BOOTX64.EFI)."""
    cfg = work / "grub-early.cfg"
    cfg.write_text(early_config(label))
    for target in ("i386-pc", "x86_64-efi"):
        if not (bootloader.GRUB_LIB / target).is_dir():
            pkg = "grub-pc-bin" if target == "i386-pc" else "grub-efi-amd64-bin"
            raise BakeError(
                f"GRUB modules for {target} are missing: install them with `apt-get install {pkg}`"
            )
    bios = work / "bios.img"
    run(["grub-mkimage", "-O", "i386-pc-eltorito", "-d", bootloader.GRUB_LIB / "i386-pc", "-o", bios, "-c", cfg,
         "-p", "/boot/grub", *BIOS_MODULES], what="grub-mkimage (BIOS El Torito)")  # fmt: skip
    efi = work / "BOOTX64.EFI"
    run(["grub-mkimage", "-O", "x86_64-efi", "-d", bootloader.GRUB_LIB / "x86_64-efi", "-o", efi, "-c", cfg,
         "-p", "/boot/grub", *EFI_MODULES], what="grub-mkimage (UEFI)")  # fmt: skip
    esp = work / "efi.img"
    esp.unlink(missing_ok=True)  # mkfs.vfat -C refuses an existing file
    size = max(2 << 20, -(-(efi.stat().st_size + (512 << 10)) // (1 << 20)) << 20)
    make_esp(esp, size, efi, hashlib.sha256(label.encode()).hexdigest()[:8].upper(), epoch)
    return bios, esp


class _FrozenClock(types.ModuleType):
    """Stands in for the ``time`` module inside pycdlib: now is ``epoch``, local time is UTC."""

    def __init__(self, epoch: int) -> None:
        super().__init__("time")
        self._epoch = float(epoch)

    def time(self) -> float:
        return self._epoch

    def localtime(self, secs: float | None = None) -> _time.struct_time:
        return _time.gmtime(self._epoch if secs is None else secs)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


@contextlib.contextmanager
def frozen_pycdlib_clock(epoch: int) -> Iterator[None]:
    """pycdlib stamps every record with ``time.time()`` in local time and has no option for a fixed
    date: swap its modules' ``time`` for a frozen clock while an ISO is built (and put it back)."""
    import pycdlib  # noqa: F401  (loads its modules)

    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("pycdlib.") and getattr(m, "time", None) is _time]  # fmt: skip
    clock = _FrozenClock(epoch)
    for m in patched:
        m.time = clock  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m in patched:
            m.time = _time  # type: ignore[attr-defined]


def new_iso(label: str, epoch: int) -> Any:
    """An empty pycdlib ISO: level 3 names, Rock Ridge (kernel, GRUB) and Joliet (Windows) names."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    with frozen_pycdlib_clock(epoch):
        iso.new(interchange_level=3, vol_ident=label, sys_ident="LINUX", app_ident_str="TALOS-BAKE",
                joliet=3, rock_ridge="1.09")  # fmt: skip
    return iso


def add_dirs(iso: Any, path: str, done: set[str]) -> None:
    """Add ``/A``, ``/A/B`` ... for the file path ``/A/B/file`` (once each)."""
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if d not in done:
            iso.add_directory(iso_name(d, directory=True), rr_name=parts[i - 1], joliet_path=d)
            done.add(d)


def _d_chars(text: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", text.upper())


def iso_name(path: str, directory: bool = False) -> str:
    """ISO 9660 level-3 name for ``/boot/A/initramfs.zst``: ``/BOOT/A/INITRAMFS.ZST;1`` (Rock Ridge and
    Joliet keep the real name)."""
    parts = path.strip("/").split("/")
    if directory:
        return "/" + "/".join(_d_chars(p)[:31] for p in parts)
    stem, _, ext = parts[-1].rpartition(".") if "." in parts[-1] else (parts[-1], "", "")
    return "/" + "/".join(
        [*(_d_chars(p)[:31] for p in parts[:-1]), f"{_d_chars(stem)[:30]}.{_d_chars(ext)};1"]
    )


def pad(path: Path, tail: int = PAD_BYTES, align: int = 1 << 20) -> None:
    """Zeros after the last file, as ``mkisofs -pad`` adds: firmware and GRUB read CDs in chunks,
    and a chunk running past the end of the medium fails (GRUB then hands back stale data for a file
    in the last sectors)."""
    size = path.stat().st_size
    os.truncate(path, -(-(size + tail) // align) * align)


def build(
    sources: IsoSources,
    dest: Path,
    work: Path,
    epoch: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, str]:
    """Write the live ISO to ``dest`` (atomically); returns it and its volume label."""
    label = volume_label(sources)
    cmdline = live_cmdline(sources.cmdline, label)
    bios, esp = grub_images(work, label, epoch)
    grub_cfg = work / "grub-iso.cfg"
    menu = bootloader.grub_cfg([("A", cmdline)])
    if sources.boot_uuid is not None:
        menu += installed_entry(sources.boot_uuid)
    grub_cfg.write_text(menu)
    files = [
        (bios, "/boot/grub/bios.img"),
        (esp, "/boot/grub/efi.img"),
        (grub_cfg, "/boot/grub/grub.cfg"),
        (sources.kernel, "/boot/A/vmlinuz"),
        (sources.initramfs, "/boot/A/initramfs.zst"),
        (sources.squashfs, "/" + ROOT_PATH),
    ]
    if sources.image_map is not None and sources.image_data is not None:
        files += [
            (sources.image_map, "/" + install_image.MAP_PATH),
            (sources.image_data, "/" + install_image.DATA_PATH),
        ]
    iso = new_iso(label, epoch)
    try:
        with frozen_pycdlib_clock(epoch):
            done: set[str] = set()
            for src, path in files:
                add_dirs(iso, path, done)
                iso.add_file(str(src), iso_name(path), rr_name=path.rsplit("/", 1)[1], joliet_path=path)
            # BIOS: no emulation, 4 sectors loaded, GRUB's cdboot finds the rest via the boot info table.
            iso.add_eltorito(iso_name("/boot/grub/bios.img"), bootcatfile="/BOOT.CAT;1", boot_load_size=4,
                             boot_info_table=True)  # fmt: skip
            # UEFI: a second entry (platform 0xEF) whose image is a FAT filesystem with EFI/BOOT/BOOTX64.EFI.
            iso.add_eltorito(iso_name("/boot/grub/efi.img"), bootcatfile="/BOOT.CAT;1", efi=True,
                             platform_id=0xEF)  # fmt: skip
            with atomic_path(dest) as tmp:
                iso.write(str(tmp), progress_cb=(lambda done, total, _opaque: progress(done, total))
                          if progress else None)  # fmt: skip
                pad(tmp)
    finally:
        iso.close()
    return dest, label
