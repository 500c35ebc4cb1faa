"""The live ISO's pure parts: command line, ISO 9660 names, squashfs length, padding, the GPT reader,
and the one-sentence refusals of an image that is not a talos-os image."""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from bakery import gpt, iso
from bakery.errors import BakeError


def test_live_cmdline_points_the_root_at_the_iso() -> None:
    baked = (
        "init_on_alloc=1 console=ttyS0 talos.platform=bare-metal talos.root=ROOT-A talos.config=http://h/c"
    )
    assert iso.live_cmdline(baked, "TALOS_0A1B2C3D") == (
        "init_on_alloc=1 console=ttyS0 talos.platform=bare-metal talos.root=iso:TALOS_0A1B2C3D/talos/root.sqsh "
        "talos.config=http://h/c"
    )
    assert iso.live_cmdline("quiet", "L").endswith(" talos.root=iso:L/talos/root.sqsh")
    assert "xtalos.root=keep" in iso.live_cmdline("xtalos.root=keep", "L")


def test_early_config_finds_the_iso_by_label() -> None:
    cfg = iso.early_config("TALOS_0A1B2C3D")
    assert cfg.splitlines()[0] == "search --no-floppy --label --set=root TALOS_0A1B2C3D"
    assert "configfile ($root)/boot/grub/grub.cfg" in cfg


def test_iso9660_names() -> None:
    assert iso.iso_name("/boot/A/initramfs.zst") == "/BOOT/A/INITRAMFS.ZST;1"
    assert iso.iso_name("/boot/A/vmlinuz") == "/BOOT/A/VMLINUZ.;1"
    assert iso.iso_name("/talos/root.sqsh") == "/TALOS/ROOT.SQSH;1"
    assert iso.iso_name("/boot/grub-x", directory=True) == "/BOOT/GRUB_X"


def test_squashfs_length_comes_from_the_superblock() -> None:
    sb = bytearray(96)
    sb[:4] = b"hsqs"
    struct.pack_into("<Q", sb, 40, 10_000)
    assert iso.squashfs_length(bytes(sb)) == 12_288  # padded to 4 KiB as mksquashfs pads
    with pytest.raises(BakeError, match="ROOT-A partition holds no squashfs"):
        iso.squashfs_length(bytes(96))


def test_pad_leaves_room_after_the_last_file(tmp_path: Path) -> None:
    f = tmp_path / "x.iso"
    f.write_bytes(b"x" * 5000)
    iso.pad(f)
    assert f.stat().st_size == 1 << 20 and f.read_bytes()[:5000] == b"x" * 5000
    f.write_bytes(b"x" * ((1 << 20) - 1000))
    iso.pad(f)
    assert f.stat().st_size == 2 << 20


def test_gpt_reader_and_damaged_tables(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:+2M", "-c", "1:BOOT", "-t", "1:8300", "-n", "2:0:0",
                    "-c", "2:DATA", str(disk)], check=True, capture_output=True)  # fmt: skip
    parts = gpt.read_partitions(disk)
    assert [(p.number, p.name, p.first_lba, p.size) for p in parts] == [
        (1, "BOOT", 2048, 2 << 20),
        (2, "DATA", 6144, parts[1].size),
    ]
    assert (
        str(parts[0].type_guid).upper() == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        and parts[0].offset == 1 << 20
    )
    with pytest.raises(BakeError, match="not a talos-os image"):
        iso.sources_from_image(disk, tmp_path)
    raw = bytearray(disk.read_bytes())
    raw[1024 + 128 + 60] ^= 0xFF  # a byte of the first entry's name: the array CRC no longer matches
    disk.write_bytes(bytes(raw))
    with pytest.raises(BakeError, match="damaged"):
        gpt.read_partitions(disk)
    header = bytearray(raw[512:604])
    header[16:20] = bytes(4)
    assert gpt.parse_header(bytes(raw[512:1024])) is not None
    assert zlib.crc32(bytes(header)) == struct.unpack_from("<I", raw, 512 + 16)[0]
    raw[512 + 40] ^= 1  # damage the header itself
    disk.write_bytes(bytes(raw))
    with pytest.raises(BakeError, match="has no valid GPT partition table"):
        gpt.read_partitions(disk)
