"""KVM config sources (command line, fw_cfg, NoCloud) on fake trees and image files."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from platforms.kvm import sources
from talos_os.plugins import nocloud
from talos_os.plugins.nocloud import BlockDevice


def iso_image(path: Path, label: str) -> Path:
    """Just enough ISO 9660 for label probing: a primary volume descriptor at sector 16."""
    pvd = bytearray(2048)
    pvd[0] = 1
    pvd[1:6] = b"CD001"
    pvd[6] = 1
    pvd[40:72] = label.encode().ljust(32, b" ")
    path.write_bytes(bytes(16 * 2048) + bytes(pvd) + bytes(2048))
    return path


def fat_image(path: Path, label: str | None, fat32: bool = False) -> Path:
    """Just enough of a FAT boot sector: extended boot signature, label, type, 0x55AA."""
    boot = bytearray(512)
    raw = (label or "NO NAME").encode().ljust(11, b" ")
    if fat32:
        boot[66] = 0x29
        boot[71:82] = raw
        boot[82:90] = b"FAT32   "
    else:
        boot[38] = 0x29
        boot[43:54] = raw
        boot[54:62] = b"FAT16   "
    boot[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(boot) + bytes(40 * 1024))
    return path


@contextlib.contextmanager
def no_mount(device: BlockDevice) -> Iterator[Path]:
    raise AssertionError(f"unexpected mount of {device.path}")
    yield Path("/")  # pragma: no cover


class FakeMount:
    """A mounter that "mounts" a device by yielding a prepared directory, and records it."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self.calls: list[str] = []
        self.active = 0

    @contextlib.contextmanager
    def __call__(self, device: BlockDevice) -> Iterator[Path]:
        self.calls.append(device.path)
        self.active += 1
        try:
            yield self.dirs[device.path]
        finally:
            self.active -= 1


# --- command line and fw_cfg ------------------------------------------------------------------


def test_config_url_from_cmdline() -> None:
    assert sources.config_url_from_cmdline("ro talos.config=http://10.0.2.2:8080/c.yaml") == (
        "http://10.0.2.2:8080/c.yaml"
    )
    assert sources.config_url_from_cmdline("ro talos.config=") is None
    assert sources.config_url_from_cmdline("ro quiet") is None


def test_fw_cfg(tmp_path: Path) -> None:
    raw = tmp_path / "by_name/opt/talos/config/raw"
    assert sources.read_fw_cfg(raw) is None
    raw.parent.mkdir(parents=True)
    big = bytes(range(256)) * 3000  # 768000 bytes: several chunks
    raw.write_bytes(big)
    assert sources.read_fw_cfg(raw) == big
    with pytest.raises(ValueError, match="larger than 1000 bytes"):
        sources.read_fw_cfg(raw, max_bytes=1000)
    assert str(sources.FW_CFG_CONFIG) == "/sys/firmware/qemu_fw_cfg/by_name/opt/talos/config/raw"


# --- labels and block devices -----------------------------------------------------------------


def test_probe_label_crafted(tmp_path: Path) -> None:
    assert nocloud.probe_label(iso_image(tmp_path / "a.iso", "cidata")) == ("iso9660", "cidata")
    assert nocloud.probe_label(fat_image(tmp_path / "b.img", "CIDATA")) == ("vfat", "CIDATA")
    assert nocloud.probe_label(fat_image(tmp_path / "c.img", "cidata", fat32=True)) == ("vfat", "cidata")
    assert nocloud.probe_label(fat_image(tmp_path / "d.img", None)) == ("vfat", None)
    (tmp_path / "e.img").write_bytes(b"\xff" * 40000)
    assert nocloud.probe_label(tmp_path / "e.img") is None
    assert nocloud.probe_label(tmp_path / "missing") is None


@pytest.mark.skipif(shutil.which("mkfs.vfat") is None, reason="dosfstools not installed")
def test_probe_label_real_vfat(tmp_path: Path) -> None:
    for args, name in (([], "fat16.img"), (["-F", "32"], "fat32.img")):
        img = tmp_path / name
        subprocess.run(
            ["mkfs.vfat", *args, "-C", "-n", "CIDATA", str(img), "40000"], check=True, capture_output=True
        )
        assert nocloud.probe_label(img) == ("vfat", "CIDATA")


def test_probe_label_real_iso(tmp_path: Path) -> None:
    pycdlib = pytest.importorskip("pycdlib")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, vol_ident="cidata")
    data = b"#cloud-config\n"
    iso.add_fp(io.BytesIO(data), len(data), "/USERDATA.;1", joliet_path="/user-data")
    iso.write(str(tmp_path / "seed.iso"))
    iso.close()
    assert nocloud.probe_label(tmp_path / "seed.iso") == ("iso9660", "cidata")


def test_list_block_devices(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    for name, size in (("vda", "2097152"), ("vda1", "204800"), ("sr0", "736"), ("sr1", "0"), ("loop0", "0")):
        (tmp_path / "sys/class/block" / name).mkdir(parents=True)
        (tmp_path / "sys/class/block" / name / "size").write_text(size + "\n")
    (tmp_path / "dev/vda").write_bytes(bytes(70000))
    fat_image(tmp_path / "dev/vda1", "EFI")
    iso_image(tmp_path / "dev/sr0", "cidata")
    devices = nocloud.list_block_devices(tmp_path)
    assert devices == [
        BlockDevice(str(tmp_path / "dev/sr0"), "cidata", "iso9660"),
        BlockDevice(str(tmp_path / "dev/vda"), None, None),
        BlockDevice(str(tmp_path / "dev/vda1"), "EFI", "vfat"),
    ]
    assert nocloud.find_cidata(devices) == devices[0]
    assert nocloud.list_block_devices(tmp_path / "nothing") == []


def test_find_cidata_rules() -> None:
    assert nocloud.find_cidata([BlockDevice("/dev/vdb", "config-2", "iso9660")]) is None
    assert nocloud.find_cidata([BlockDevice("/dev/vdb", "cidata", "ext4")]) is None
    assert (
        nocloud.find_cidata([BlockDevice("/dev/vdb", "CiData", "vfat")]) is None
    )  # cloud-init's two spellings only
    devs = [BlockDevice("/dev/vda", None, None), BlockDevice("/dev/vdb", "CIDATA", "vfat")]
    assert nocloud.find_cidata(devs) == devs[1]


def test_read_cidata_with_fake_mount(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "user-data").write_bytes(b"machine: {}\n")
    (seed / "meta-data").write_bytes(b"instance-id: i-1\n")
    dev = BlockDevice("/dev/sr0", "cidata", "iso9660")
    mount = FakeMount({"/dev/sr0": seed})
    data = nocloud.read_cidata(dev, mount)
    assert data.user_data == b"machine: {}\n"
    assert data.meta_data == b"instance-id: i-1\n"
    assert data.network_config is None
    assert mount.calls == ["/dev/sr0"] and mount.active == 0  # unmounted afterwards
    (seed / "user-data").write_bytes(b"x" * (nocloud.FILE_LIMIT + 1))
    with pytest.raises(ValueError, match="larger than"):
        nocloud.read_cidata(dev, mount)
    assert mount.active == 0


# --- SMBIOS seed ------------------------------------------------------------------------------


def test_parse_seed() -> None:
    seed = nocloud.parse_seed("ds=nocloud;s=http://10.0.2.2:8000/;h=node1;i=abc")
    assert seed is not None
    assert seed.seedfrom == "http://10.0.2.2:8000/"
    assert seed.params["local-hostname"] == "node1" and seed.params["instance-id"] == "abc"
    assert seed.url("user-data") == "http://10.0.2.2:8000/user-data"
    no_slash = nocloud.parse_seed("ds=nocloud-net;seedfrom=http://h/seed")
    assert no_slash is not None and no_slash.url("meta-data") == "http://h/seed/meta-data"
    bare = nocloud.parse_seed("ds=nocloud")
    assert bare is not None and bare.seedfrom is None and bare.url("user-data") is None
    assert nocloud.parse_seed("VMware-56 4d 12 34") is None
    assert nocloud.parse_seed("") is None


def test_read_smbios_serial(tmp_path: Path) -> None:
    assert nocloud.read_smbios_serial(tmp_path) is None
    p = tmp_path / "sys/class/dmi/id/product_serial"
    p.parent.mkdir(parents=True)
    p.write_text("ds=nocloud;s=http://10.0.2.2/\n")
    assert nocloud.read_smbios_serial(tmp_path) == "ds=nocloud;s=http://10.0.2.2/"


# --- the whole lookup -------------------------------------------------------------------------


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    d = tmp_path / "seed"
    d.mkdir()
    (d / "user-data").write_bytes(b"from cidata")
    return d


def test_discover_priority(tmp_path: Path, seed_dir: Path) -> None:
    raw = tmp_path / "fw_cfg_raw"
    raw.write_bytes(b"from fw_cfg")
    devs = [BlockDevice("/dev/sr0", "cidata", "iso9660")]
    mount = FakeMount({"/dev/sr0": seed_dir})
    serial = "ds=nocloud;s=http://10.0.2.2:8000/"
    kw: dict[str, Any] = {"fw_cfg_path": raw, "devices": devs, "mount": mount, "smbios_serial": serial}

    ref = sources.discover_config("talos.config=http://10.0.2.2/c.yaml", **kw)
    assert ref is not None and ref.url == "http://10.0.2.2/c.yaml" and "command line" in ref.source
    assert mount.calls == []

    ref = sources.discover_config("quiet", **kw)
    assert ref is not None and ref.data == b"from fw_cfg" and ref.source == "fw_cfg opt/talos/config"

    raw.write_bytes(b"")  # empty blob: treated as absent
    ref = sources.discover_config("quiet", **kw)
    assert ref is not None and ref.data == b"from cidata" and "/dev/sr0" in ref.source

    raw.unlink()
    ref = sources.discover_config("quiet", fw_cfg_path=raw, devices=[], mount=no_mount, smbios_serial=serial)
    assert ref is not None and ref.url == "http://10.0.2.2:8000/user-data"

    assert sources.discover_config("quiet", fw_cfg_path=raw) is None


def test_cidata_without_user_data_falls_through(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "meta-data").write_text("instance-id: x\n")
    devs = [BlockDevice("/dev/vdb", "CIDATA", "vfat")]
    ref = sources.discover_config(
        "",
        fw_cfg_path=tmp_path / "none",
        devices=devs,
        mount=FakeMount({"/dev/vdb": empty}),
        smbios_serial="ds=nocloud;s=http://10.0.2.2/s/",
    )
    assert ref is not None and ref.url == "http://10.0.2.2/s/user-data"
