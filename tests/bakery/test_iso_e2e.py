"""End to end: ``talos-bake iso --image`` turns the session's baked image into a live ISO whose two
El Torito entries boot it to the init banner under SeaBIOS (IDE CD-ROM) and OVMF (virtio-scsi
CD-ROM), with the root squashfs read from the CD through a loop device."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pycdlib
import pytest
from click.testing import CliRunner

from bakery import bootloader, qemu
from bakery import iso as live_iso
from bakery.cli import cli
from bakery.image import KSPP_ARGS, BakeResult
from talos_os import __version__

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def live(baked_image: BakeResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iso")
    result = CliRunner().invoke(cli, ["iso", "--image", str(baked_image.raw), "--out", str(out)])
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path == out / "talos-kvm.iso"
    return path


def _read(iso: pycdlib.PyCdlib, path: str) -> bytes:
    import io

    buf = io.BytesIO()
    iso.get_file_from_iso_fp(buf, rr_path=path)
    return buf.getvalue()


def test_iso_carries_the_image_and_boots_both_ways(live: Path, baked_image: BakeResult) -> None:
    manifest = json.loads(baked_image.manifest.read_text())
    iso = pycdlib.PyCdlib()
    iso.open(str(live))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        assert re.fullmatch(r"TALOS_[0-9A-F]{8}", label)
        catalog = iso.eltorito_boot_catalog
        assert catalog.validation_entry.platform_id == 0 and catalog.initial_entry.sector_count == 4  # BIOS
        assert [s.platform_id for s in catalog.sections] == [0xEF]  # UEFI
        cfg = _read(iso, "/boot/grub/grub.cfg").decode()
        assert _read(iso, "/boot/A/vmlinuz") == baked_image.kernel.read_bytes()
        assert _read(iso, "/boot/A/initramfs.zst") == baked_image.initramfs.read_bytes()
        root = _read(iso, "/talos/root.sqsh")
    finally:
        iso.close()
    part = next(p for p in manifest["partitions"] if p["name"] == "ROOT-A")
    with open(baked_image.raw, "rb") as f:
        f.seek(part["first_lba"] * 512)
        assert root == f.read(manifest["squashfs_bytes"]), "the squashfs of ROOT-A, byte for byte"
    expected = live_iso.live_cmdline(manifest["cmdline"], label)
    # the baked command line, then the slot entry's own words (reboot on panic, the bundle's arguments)
    assert f"linux /boot/A/vmlinuz {expected} {bootloader.PANIC_REBOOT} $talos_A_args\n" in cfg
    assert f"talos.root=iso:{label}/talos/root.sqsh" in expected and "ROOT-A" not in expected
    assert KSPP_ARGS in expected
    assert live.stat().st_size % (1 << 20) == 0, "padded past the last file"


def test_iso_is_reproducible(live: Path, tmp_path: Path, baked_image: BakeResult) -> None:
    sources = live_iso.sources_from_image(baked_image.raw, tmp_path)
    again, _ = live_iso.build(sources, tmp_path / "again.iso", tmp_path, epoch=1704067200)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (live, again)]
    assert digest[0] == digest[1]


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_live_iso_boots_to_the_init_banner(live: Path, firmware: str) -> None:
    if firmware == "bios":
        cdrom = ["-cdrom", str(live)]  # IDE on i440fx: ata_piix + sr_mod
    else:  # q35's CD-ROM is AHCI, which the cloud kernel lacks: virtio-scsi, as clouds attach ISOs
        cdrom = ["-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-cd,drive=cd0,bootindex=0",
                 "-drive", f"if=none,id=cd0,media=cdrom,readonly=on,file={live}"]  # fmt: skip
    with qemu.start(None, firmware=firmware, extra=cdrom) as vm:
        match, seconds = vm.wait_for(qemu.BANNER, BOOT_TIMEOUT)
        assert match.group(1) == __version__ and match.group(2) == "kvm"
        stage1 = next(line for line in vm.lines if "stage1: root" in line)
        assert re.search(r"root talos/root\.sqsh on TALOS_[0-9A-F]{8} \(/dev/sr0, via /dev/loop\d+\)", stage1)
    print(f"live ISO, {firmware}: banner after {seconds:.1f} s")


def test_under_uefi_the_iso_menu_boots_an_installed_disk(live: Path, baked_image: BakeResult) -> None:
    """The ISO left in the drive after an install must not loop back into the installer: its menu
    finds the installed disk's BOOT filesystem (by UUID) and boots it. The BIOS path is walked by the
    maintenance e2e; this is EFI GRUB's. The baked image stands in for an installed disk (an install
    writes that image, BOOT UUID included). The disk is in the boot order after the CD, as on a
    machine that boots from disk once the ISO is gone: OVMF connects only the devices in its boot
    order, and EFI GRUB sees no disk the firmware did not connect."""
    devices = ["-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-cd,drive=cd0,bootindex=0",
               "-drive", f"if=none,id=cd0,media=cdrom,readonly=on,file={live}",
               "-drive", f"if=none,id=hd0,format=raw,snapshot=on,file={baked_image.raw}",
               "-device", "virtio-blk-pci,drive=hd0,bootindex=1"]  # fmt: skip
    with qemu.start(None, firmware="uefi", extra=devices) as vm:
        vm.wait_for(qemu.BANNER, BOOT_TIMEOUT)
        stage1 = next(line for line in vm.lines if "stage1: root" in line)
    assert re.search(r"stage1: root ROOT-A \(/dev/vda\d\) mounted", stage1), stage1
