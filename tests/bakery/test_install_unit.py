"""talos-bake install without booting: the in-use, non-empty and size checks, the sparse-aware
write over files and (as root) loop devices, the read-back, the backup GPT move, and the CLI."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeimage import make_image

from bakery import gpt, install
from bakery.cli import cli
from bakery.errors import BakeError
from bakery.install import System, Target

MiB = 1 << 20


def small_image(path: Path, size: int = 24 * MiB) -> Path:
    """A GPT disk image like a baked one, in miniature: two partitions, data in one, holes elsewhere."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:+4M", "-c", "1:BOOT", "-n", "2:0:0", "-c", "2:EPHEMERAL",
                    str(path)], check=True, capture_output=True)  # fmt: skip
    with open(path, "r+b") as f:
        f.seek(2 * MiB)
        f.write(os.urandom(MiB + 4096))  # a partial chunk of data after a full one
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return small_image(tmp_path / "talos.raw")


@pytest.fixture
def talos_image(tmp_path: Path) -> Path:
    """What the CLI accepts as --image: it looks like a talos-os image baked for bare metal."""
    return make_image(tmp_path / "talos-bare-metal.raw", "bare-metal", size_mib=24)


def junk_file(path: Path, size: int, offsets: list[int]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off in offsets:
            f.seek(off)
            f.write(b"\xab" * 4096)
    return path


# --- checks -----------------------------------------------------------------------------------


def test_signatures_name_what_the_ends_of_a_disk_hold() -> None:
    empty = bytes(MiB)
    assert install.signatures(empty, empty) == []
    gpt_head = bytearray(MiB)
    gpt_head[510:512] = b"\x55\xaa"
    gpt_head[512:520] = b"EFI PART"
    assert install.signatures(bytes(gpt_head), empty) == ["a GPT partition table"]
    mbr = bytearray(MiB)
    mbr[510:512] = b"\x55\xaa"
    assert install.signatures(bytes(mbr), empty) == ["an MBR boot signature"]
    backup = bytearray(MiB)
    backup[-512:-504] = b"EFI PART"
    assert install.signatures(empty, bytes(backup)) == ["a backup GPT header"]
    some = bytearray(MiB)
    some[700_000] = 1
    assert install.signatures(bytes(some), empty) == ["data in its first MiB"]
    assert install.signatures(empty, bytes(some)) == ["data in its last MiB"]


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
29 27 8:17 / /mnt/old\\040disk rw,relatime shared:5 - ext4 /dev/sdb1 rw
30 27 0:45 / /srv rw,relatime - btrfs /dev/sdc rw,space_cache
31 27 0:46 / /img rw - squashfs /var/lib/disk.img ro
"""


def fake_system(tmp_path: Path) -> System:
    """sysfs for sdb (8:16) with partitions sdb1 (8:17) and sdb2 (8:18, held by dm-0) and a loop device."""
    sys_root = tmp_path / "sys"
    disk = sys_root / "devices/pci0/sdb"
    for name, dev in (("sdb1", "8:17"), ("sdb2", "8:18")):
        (disk / name).mkdir(parents=True)
        (disk / name / "partition").write_text("1\n")
        (disk / name / "dev").write_text(dev + "\n")
    (disk / "holders").mkdir()
    (sys_root / "dev/block").mkdir(parents=True)
    (sys_root / "dev/block/8:16").symlink_to(disk)
    (sys_root / "dev/block/8:17").symlink_to(disk / "sdb1")
    (sys_root / "dev/block/8:18").symlink_to(disk / "sdb2")
    (disk / "sdb2/holders").mkdir()
    (disk / "sdb2/holders/dm-0").mkdir()
    (sys_root / "class/block/loop3/loop").mkdir(parents=True)
    (sys_root / "class/block/loop3/loop/backing_file").write_text("/var/lib/vm.raw\n")
    (tmp_path / "mountinfo").write_text(MOUNTINFO)
    (tmp_path / "swaps").write_text("Filename Type Size Used Priority\n/dev/sdd partition 1 0 -2\n")
    return System(mountinfo=tmp_path / "mountinfo", swaps=tmp_path / "swaps", sys=sys_root)


def test_mountinfo_parsing_unescapes_mount_points() -> None:
    mounts = install.parse_mountinfo(MOUNTINFO)
    assert ("8:17", "/mnt/old disk", "/dev/sdb1") in mounts
    assert ("0:46", "/img", "/var/lib/disk.img") in mounts


def test_in_use_by_partition_mount_holder_swap_path_or_loop(tmp_path: Path) -> None:
    system = fake_system(tmp_path)
    sdb = Target(Path("/dev/sdb"), block=True, size=8 << 30, exists=True, rdev=os.makedev(8, 16))
    assert install.uses(sdb, system) == ["/dev/sdb1 is mounted on /mnt/old disk", "sdb2 is held by dm-0"]
    # btrfs reports an anonymous device number: found by the source path instead
    sdc = Target(Path("/dev/sdc"), block=True, size=8 << 30, exists=True, rdev=os.makedev(8, 32))
    assert install.uses(sdc, system) == ["/dev/sdc is mounted on /srv"]
    sdd = Target(Path("/dev/sdd"), block=True, size=8 << 30, exists=True, rdev=os.makedev(8, 48))
    assert install.uses(sdd, system) == ["/dev/sdd is used as swap"]
    img = Target(Path("/var/lib/disk.img"), block=False, size=1 << 30, exists=True)
    assert install.uses(img, system) == ["/var/lib/disk.img is mounted on /img"]
    vm = Target(Path("/var/lib/vm.raw"), block=False, size=1 << 30, exists=True)
    assert install.uses(vm, system) == ["it backs /dev/loop3"]
    free = Target(Path("/dev/sde"), block=True, size=8 << 30, exists=True, rdev=os.makedev(8, 64))
    assert install.uses(free, system) == []


def test_refusals_are_one_sentence_naming_the_fix(image: Path, tmp_path: Path) -> None:
    system = fake_system(tmp_path)
    small = junk_file(tmp_path / "small.raw", 8 * MiB, [])
    with pytest.raises(BakeError, match=r"has 8 MiB but the image needs 24 MiB: use a larger disk"):
        install.install(image, small, system=system)
    full = junk_file(tmp_path / "full.raw", 32 * MiB, [32 * MiB - 4096])
    with pytest.raises(
        BakeError, match=r"refusing to overwrite .*full.raw: it holds data in its last MiB; pass --force"
    ):
        install.install(image, full, system=system)
    with pytest.raises(BakeError, match="is the image itself"):
        install.install(image, image, force=True, system=system)
    with pytest.raises(BakeError, match="its directory does not exist"):
        install.install(image, tmp_path / "no/such/dir/disk.raw", system=system)
    with pytest.raises(BakeError, match="neither a block device nor a regular file"):
        install.install(image, tmp_path, system=system)
    with pytest.raises(BakeError, match="no valid GPT"):
        install.install(full, tmp_path / "new.raw", system=system)
    assert not (tmp_path / "new.raw").exists()
    for path in (small, full):
        assert path.read_bytes().count(0xAB) in (0, 4096), "a refused target is left as it was"


# --- the write --------------------------------------------------------------------------------


def test_runs_skip_holes_and_zero_chunks(image: Path) -> None:
    items = list(install.coalesce(install.runs(image)))
    data = [(off, len(x)) for off, x in items if isinstance(x, bytes)]
    zeros = [(off, x) for off, x in items if isinstance(x, int)]
    assert sum(n for _, n in data) + sum(n for _, n in zeros) == image.stat().st_size
    assert (2 * MiB, MiB) in data and (3 * MiB, 4096) in data  # the random data, chunk by chunk
    assert data[0][0] == 0  # protective MBR + primary GPT
    assert all(
        a[0] + (a[1] if isinstance(a[1], int) else len(a[1])) == b[0] for a, b in itertools.pairwise(items)
    )
    assert not any(isinstance(a[1], int) and isinstance(b[1], int) for a, b in itertools.pairwise(items))


def test_runs_cover_leading_and_trailing_holes(tmp_path: Path) -> None:
    path = tmp_path / "holes.raw"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(4 * MiB)
        f.write(b"\x01" * 4096)
    items = list(install.coalesce(install.runs(path)))
    assert items[0] == (0, 4 * MiB) and items[1] == (4 * MiB, b"\x01" * 4096)
    assert items[-1] == (4 * MiB + 4096, 4 * MiB - 4096), "the hole up to the end is a zero range too"


def test_install_to_a_new_file_is_exact_and_sparse(image: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    report = install.install(image, disk)
    assert disk.read_bytes() == image.read_bytes()
    assert disk.stat().st_blocks * 512 < 4 * MiB, "holes stay holes"
    assert report.zeroed_bytes == 0 and report.data_bytes < 2 * MiB and report.gpt_moved_to is None
    lines = report.lines(image)
    assert lines[0].startswith(f"wrote talos.raw to file {disk}: 24 MiB") and "left as holes" in lines[0]
    assert "read back have the image's sha256" in lines[1]


def test_forced_install_over_a_larger_file_zeroes_old_data_and_moves_the_backup_gpt(
    image: Path, tmp_path: Path
) -> None:
    disk = junk_file(tmp_path / "disk.raw", 40 * MiB, [0, 10 * MiB, 30 * MiB, 40 * MiB - 4096])
    report = install.install(image, disk, force=True)
    data = disk.read_bytes()
    gpt_end = 34 * 512  # moving the backup GPT rewrites the protective MBR's size and the primary header
    assert data[gpt_end : 3 * MiB + 4096] == image.read_bytes()[gpt_end : 3 * MiB + 4096]
    assert data[10 * MiB : 10 * MiB + 4096] == bytes(4096), "old data inside the image's zero ranges is gone"
    assert data[30 * MiB : 30 * MiB + 4096] == b"\xab" * 4096, "beyond the image nothing is written"
    assert gpt.read_partitions(disk) == gpt.read_partitions(image)
    assert install.backup_header_at_end(install.inspect_target(disk))
    assert report.gpt_moved_to == 40 * MiB and report.zeroed_bytes > 0
    assert "overwrote (--force) what" in report.lines(image)[-1]
    verify = subprocess.run(["sgdisk", "-v", str(disk)], capture_output=True, text=True, check=True).stdout
    assert "No problems found" in verify


# --- real loop devices (root) -----------------------------------------------------------------


def _losetup_works() -> bool:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists() or not shutil.which("losetup"):
        return False
    return subprocess.run(["losetup", "-f"], capture_output=True, check=False).returncode == 0


needs_losetup = pytest.mark.skipif(
    not _losetup_works(), reason="needs root and working loop devices (losetup)"
)


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    backing = tmp_path / "backing.raw"
    with open(backing, "wb") as f:
        f.truncate(48 * MiB)
    device = subprocess.run(["losetup", "-f", "--show", "-P", str(backing)], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    try:
        yield Path(device), backing
    finally:
        subprocess.run(["umount", "-R", str(tmp_path / "mnt")], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


@needs_losetup
def test_a_disk_with_a_mounted_partition_is_refused_even_when_forced(
    image: Path, loop_disk: tuple[Path, Path], tmp_path: Path
) -> None:
    device, backing = loop_disk
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:+16M", str(device)], check=True, capture_output=True)
    subprocess.run(["partx", "-u", str(device)], capture_output=True, check=False)
    part = Path(f"{device}p1")
    if not part.exists():
        pytest.skip(f"no partition node {part} appeared (no udev/devtmpfs partition support here)")
    subprocess.run(["mkfs.ext4", "-q", str(part)], check=True, capture_output=True)
    (tmp_path / "mnt").mkdir()
    subprocess.run(["mount", str(part), str(tmp_path / "mnt")], check=True, capture_output=True)
    with pytest.raises(
        BakeError, match=rf"refusing to write to {device}: {part} is mounted on .*mnt; unmount"
    ):
        install.install(image, device, force=True)
    with pytest.raises(BakeError, match=rf"it backs {device}"):
        install.install(image, backing, force=True)
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    with pytest.raises(BakeError, match="it holds a GPT partition table; pass --force"):
        install.install(image, device)


@needs_losetup
def test_forced_install_onto_a_loop_device(image: Path, loop_disk: tuple[Path, Path]) -> None:
    device, _ = loop_disk
    with open(device, "r+b") as f:
        for off in (0, 8 * MiB, 20 * MiB, 48 * MiB - 4096):
            f.seek(off)
            f.write(b"\xcd" * 4096)
    report = install.install(image, device, force=True)
    assert report.target.block and report.zeroed_bytes > 0 and report.gpt_moved_to == 48 * MiB
    with open(device, "rb") as f:
        head = f.read(24 * MiB)
    expected = bytearray(image.read_bytes())
    assert head[3 * MiB :] == bytes(expected[3 * MiB :])[: 21 * MiB], "data, zeroed ranges"
    assert gpt.read_partitions(device) == gpt.read_partitions(image)
    assert install.backup_header_at_end(install.inspect_target(device))


# --- CLI --------------------------------------------------------------------------------------


def test_cli_installs_an_existing_image(talos_image: Path, tmp_path: Path) -> None:
    image = talos_image
    disk = tmp_path / "disk.raw"
    result = CliRunner().invoke(cli, ["install", "--image", str(image), "--disk", str(disk)])
    assert result.exit_code == 0, result.output
    assert f"to file {disk}: 24 MiB" in result.output and "verified" in result.output
    assert disk.read_bytes() == image.read_bytes()
    again = CliRunner().invoke(cli, ["install", "--image", str(image), "--disk", str(disk)])
    assert again.exit_code == 1
    assert again.output.strip().splitlines()[-1] == (
        f"Error: refusing to overwrite {disk}: it holds a GPT partition table; pass --force to overwrite it"
    )


def test_cli_refuses_bake_options_next_to_image(talos_image: Path, tmp_path: Path) -> None:
    image = talos_image
    for extra in (["--config-url", "http://10.0.0.1/c.yaml"], ["--out", str(tmp_path)]):
        result = CliRunner().invoke(
            cli, ["install", "--image", str(image), "--disk", str(tmp_path / "d.raw"), *extra]
        )
        assert result.exit_code == 1
        assert f"Error: {extra[0]} only applies when baking: drop it, or drop --image" in result.output
    assert not (tmp_path / "d.raw").exists()
    help_text = CliRunner().invoke(cli, ["install", "--help"]).output
    assert "[default: bare-metal]" in help_text.replace("-\n", "-").replace("\n ", " ").replace("  ", "")
