"""End to end: ``talos-bake install`` writes the session's baked image to a new sparse file, which
then boots under SeaBIOS to the init banner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bakery import qemu
from bakery.cli import cli
from bakery.fetch import sha256_of
from bakery.image import BakeResult
from talos_os import __version__

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 300.0


def test_installed_disk_boots_to_the_init_banner(baked_image: BakeResult, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    # the default image is baked for kvm, and the installed disk boots in QEMU: publish it anyway
    args = ["install", "--image", str(baked_image.raw), "--disk", str(disk), "--force-platform"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "warning: talos-kvm.raw was baked for kvm" in result.stderr
    size = baked_image.raw.stat().st_size
    assert f"to file {disk}: {size >> 20} MiB" in result.output
    assert f"sha256 {sha256_of(baked_image.raw)[:16]}" in result.output
    assert disk.stat().st_size == size and disk.stat().st_blocks * 512 < 400 << 20, "sparse"
    with qemu.start(disk, firmware="bios", snapshot=False) as vm:
        match, seconds = vm.wait_for(qemu.BANNER, BOOT_TIMEOUT)
        assert match.group(1) == __version__
    print(f"installed disk: banner after {seconds:.1f} s; {result.output.strip()}")
