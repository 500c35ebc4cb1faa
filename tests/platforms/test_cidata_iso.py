"""The NoCloud seed ISO that ``talos-bake cidata`` writes is what the node's NoCloud reader finds and
reads: label probing on the raw file, the files through a Mounter (pycdlib here; the kernel's
iso9660 through a loop device where the host kernel has it), and the CLI's config validation."""

from __future__ import annotations

import contextlib
import hashlib
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pycdlib
import pytest
from click.testing import CliRunner

from bakery.cidata import build_cidata, default_meta_data
from bakery.cli import cli
from talos_os.config.generate import generate
from talos_os.init import loopdev
from talos_os.plugins import nocloud
from talos_os.plugins.nocloud import BlockDevice

USER_DATA = b"version: v1\nmachine:\n  type: worker\n"


@contextlib.contextmanager
def pycdlib_mount(device: BlockDevice) -> Iterator[Path]:
    """A Mounter that reads the ISO's files by their Rock Ridge names, as the kernel shows them."""
    iso = pycdlib.PyCdlib()
    iso.open(device.path)
    try:
        with tempfile.TemporaryDirectory() as top:
            for child in iso.list_children(rr_path="/"):
                if child.is_file():
                    name = child.rock_ridge.name().decode()
                    iso.get_file_from_iso(str(Path(top, name)), rr_path="/" + name)
            yield Path(top)
    finally:
        iso.close()


def test_nocloud_reader_finds_and_reads_the_seed(tmp_path: Path) -> None:
    meta = b"instance-id: node-1\nlocal-hostname: node-1\n"
    iso = build_cidata(USER_DATA, meta, tmp_path / "seed.iso")
    assert nocloud.probe_label(iso) == ("iso9660", "cidata")
    dev = nocloud.find_cidata(
        [BlockDevice(str(tmp_path / "vda")), BlockDevice(str(iso), "cidata", "iso9660")]
    )
    assert dev is not None
    data = nocloud.read_cidata(dev, pycdlib_mount)
    assert (data.user_data, data.meta_data, data.network_config) == (USER_DATA, meta, None)
    ref = nocloud.find_nocloud([dev], pycdlib_mount, None)
    assert ref is not None and ref.data == USER_DATA


def test_joliet_names_and_reproducibility(tmp_path: Path) -> None:
    a = build_cidata(USER_DATA, None, tmp_path / "a.iso")
    b = build_cidata(USER_DATA, None, tmp_path / "b.iso")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    iso = pycdlib.PyCdlib()
    iso.open(str(a))
    try:
        names = sorted(c.file_identifier().decode("utf-16-be") for c in iso.list_children(joliet_path="/"))
        assert names[-2:] == ["meta-data", "user-data"]
    finally:
        iso.close()


def test_default_meta_data_names_the_instance_by_its_config() -> None:
    one = default_meta_data(USER_DATA)
    assert one.startswith(b"instance-id: talos-") and b"local-hostname" not in one
    assert default_meta_data(USER_DATA) == one and default_meta_data(USER_DATA + b"#\n") != one
    assert default_meta_data(USER_DATA, "node-7").endswith(b"\nlocal-hostname: node-7\n")


def _kernel_has_iso9660() -> bool:
    try:
        return "iso9660" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _kernel_has_iso9660(), reason="this host's kernel has no iso9660 filesystem")
def test_kernel_mounts_the_seed(tmp_path: Path) -> None:
    iso = build_cidata(USER_DATA, None, tmp_path / "seed.iso")
    with loopdev.attach(iso) as device:
        data = nocloud.read_cidata(BlockDevice(device, "cidata", "iso9660"), nocloud.kernel_mount)
    assert data.user_data == USER_DATA and data.meta_data == default_meta_data(USER_DATA)


def test_cli_validates_the_user_data(tmp_path: Path) -> None:
    good = tmp_path / "worker.yaml"
    good.write_text(generate("demo", "https://10.0.0.1:6443").worker)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["cidata", "--user-data", str(good), "--hostname", "w1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    iso = Path(result.output.strip().splitlines()[-1])
    assert iso == out / "cidata.iso" and nocloud.probe_label(iso) == ("iso9660", "cidata")
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600, "it carries the config's secrets"
    data = nocloud.read_cidata(BlockDevice(str(iso)), pycdlib_mount)
    assert data.user_data == good.read_bytes() and data.meta_data is not None
    assert data.meta_data.endswith(b"local-hostname: w1\n")

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(USER_DATA)
    refused = CliRunner().invoke(cli, ["cidata", "--user-data", str(bad), "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 1
    assert f"Error: {bad} is not a valid machine config" in refused.output
    assert "pass --no-validate to write it anyway" in refused.output
    assert not (tmp_path / "bad").exists()
    forced = CliRunner().invoke(
        cli, ["cidata", "--user-data", str(bad), "--no-validate", "--out", str(tmp_path)]
    )
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "cidata.iso").exists()
    both = CliRunner().invoke(
        cli, ["cidata", "--user-data", str(bad), "--meta-data", str(bad), "--hostname", "x", "--no-validate"]
    )
    assert both.exit_code == 1 and "--hostname only applies to generated meta-data" in both.output
