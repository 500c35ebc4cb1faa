"""GRUB for both firmware types, installed into image files without grub-install or root.

BIOS: boot.img goes in the MBR's first 440 bytes, core.img in the BIOS boot partition, and the
two pointers grub-bios-setup would write (core's LBA in boot.img, the blocklist in core.img)
are patched here. UEFI: a standalone GRUB EFI binary as EFI/BOOT/BOOTX64.EFI. Both find the
BOOT filesystem by its UUID and read /boot/grub/grub.cfg, which Xen's pygrub reads too.
"""

from __future__ import annotations

import struct
from pathlib import Path

from bakery.errors import BakeError
from bakery.tools import run

GRUB_LIB = Path("/usr/lib/grub")
BIOS_MODULES = ["biosdisk", "part_gpt", "ext2", "search", "search_fs_uuid", "configfile", "normal",
                "linux", "echo", "test", "serial", "terminal", "loadenv"]  # fmt: skip
EFI_MODULES = ["part_gpt", "ext2", "fat", "search", "search_fs_uuid", "configfile", "normal",
               "linux", "echo", "test", "serial", "terminal", "efi_gop", "loadenv"]  # fmt: skip
PANIC_REBOOT = "panic=10"  # a kernel panic reboots, so a slot on trial that panics falls back
KERNEL_SECTOR_OFFSET = 0x5C  # boot.img: LBA of core.img (8 bytes, little-endian)
BOOT_DRIVE_OFFSET = 0x64  # boot.img: 0xff = the drive the BIOS booted from
DRIVE_CHECK_OFFSET = 0x66  # boot.img: NOPs skip the floppy probe on hard disks
BOOT_CODE_SIZE = 440
CORE_SEGMENT = 0x820  # where diskboot.img loads the rest of core.img


def early_config(boot_uuid: str) -> str:
    """Embedded in both GRUB images: find BOOT by UUID and read its grub.cfg."""
    return (
        f"search --no-floppy --fs-uuid --set=root {boot_uuid}\n"
        "set prefix=($root)/boot/grub\n"
        "configfile ($root)/boot/grub/grub.cfg\n"
    )


def entry_words(slot: str) -> str:
    """What the menu adds after a slot's baked command line: reboot on panic, the bundle's arguments."""
    return f"{PANIC_REBOOT} $talos_{slot}_args"


def baked_cmdline(linux_args: str, slot: str) -> str:
    """A menu entry's linux arguments without the words the menu adds: the command line as baked."""
    return linux_args.strip().removesuffix(entry_words(slot)).strip()


def grub_cfg(entries: list[tuple[str, str]], timeout: int = 1) -> str:
    """The menu: one entry per slot (A, B) with its kernel command line.

    Which entry boots comes from GRUB's environment block (``/boot/grub/grubenv``, see
    :mod:`talos_os.upgrade.slots`): ``saved_entry`` is the good slot; ``next_entry`` boots a new
    slot once and is cleared (``save_env``) before it boots, so whatever stops that slot, the next
    boot is the good one again. ``$talos_X_args`` are the kernel arguments of slot X's bundle.
    pygrub skips the environment lines and boots the first entry.
    """
    first = entries[0][0]
    lines = [
        "load_env",
        f"set default=talos-{first}",
        'if [ -n "${saved_entry}" ]; then',
        '    set default="${saved_entry}"',
        "fi",
        'if [ -n "${next_entry}" ]; then',
        '    set default="${next_entry}"',
        "    set next_entry=",
        "    save_env next_entry",
        "fi",
        f"set timeout={timeout}",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
    ]
    for slot, cmdline in entries:
        lines += [
            f'menuentry "talos-os {slot}" --id talos-{slot} {{',
            f"    linux /boot/{slot}/vmlinuz {cmdline} {entry_words(slot)}",
            f"    initrd /boot/{slot}/initramfs.zst",
            "}",
        ]
    return "\n".join(lines) + "\n"


def make_images(workdir: Path, boot_uuid: str) -> tuple[Path, Path, Path]:
    """Build (boot.img, core.img, BOOTX64.EFI) with the early config embedded."""
    cfg = workdir / "grub-early.cfg"
    cfg.write_text(early_config(boot_uuid))
    for target in ("i386-pc", "x86_64-efi"):
        if not (GRUB_LIB / target).is_dir():
            pkg = "grub-pc-bin" if target == "i386-pc" else "grub-efi-amd64-bin"
            raise BakeError(
                f"GRUB modules for {target} are missing: install them with `apt-get install {pkg}`"
            )
    core = workdir / "core.img"
    run(["grub-mkimage", "-O", "i386-pc", "-d", GRUB_LIB / "i386-pc", "-o", core, "-c", cfg,
         "-p", "/boot/grub", *BIOS_MODULES], what="grub-mkimage (BIOS)")  # fmt: skip
    efi = workdir / "BOOTX64.EFI"
    run(["grub-mkimage", "-O", "x86_64-efi", "-d", GRUB_LIB / "x86_64-efi", "-o", efi, "-c", cfg,
         "-p", "/boot/grub", *EFI_MODULES], what="grub-mkimage (UEFI)")  # fmt: skip
    return GRUB_LIB / "i386-pc" / "boot.img", core, efi


def install_bios(disk: Path, boot_img: Path, core_img: Path, core_lba: int, room: int) -> None:
    """Write boot.img's code into the MBR and core.img at ``core_lba``, patched to find each other."""
    boot = bytearray(boot_img.read_bytes())
    core = bytearray(core_img.read_bytes())
    if len(core) > room:
        raise BakeError(
            f"GRUB core.img ({len(core)} bytes) does not fit the BIOS boot partition ({room} bytes)"
        )
    sectors = -(-len(core) // 512)
    core += b"\0" * (sectors * 512 - len(core))
    struct.pack_into("<Q", boot, KERNEL_SECTOR_OFFSET, core_lba)
    boot[BOOT_DRIVE_OFFSET] = 0xFF
    struct.pack_into("<H", boot, DRIVE_CHECK_OFFSET, 0x9090)
    # the first blocklist sits at the end of core.img's first sector: start, length, segment
    struct.pack_into("<QHH", core, 512 - 12, core_lba + 1, sectors - 1, CORE_SEGMENT)
    with open(disk, "r+b") as f:
        f.seek(0)
        f.write(bytes(boot[:BOOT_CODE_SIZE]))  # keep the disk signature and partition table
        f.seek(core_lba * 512)
        f.write(bytes(core))
