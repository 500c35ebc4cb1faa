"""GPT grow on real sparse disk images partitioned by sgdisk, checked by sgdisk itself."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
from pathlib import Path

import pytest

from bakery import layout
from talos_os.lib import gpt

MiB = 1 << 20


def sgdisk(*args: str) -> str:
    return subprocess.run(["sgdisk", *args], check=True, capture_output=True, text=True).stdout


def make_disk(path: Path, size: int, parts: list[tuple[str, str]]) -> Path:
    """A sparse image of ``size`` bytes with partitions (name, sgdisk size like '+8M' or '0')."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    args = ["-o"]
    for number, (name, size_arg) in enumerate(parts, start=1):
        args += ["-n", f"{number}:0:{size_arg}", "-c", f"{number}:{name}"]
    sgdisk(*args, str(path))
    return path


def resize(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify(path: Path) -> str:
    out = sgdisk("-v", str(path))
    assert "No problems found" in out, out
    return out


def part_range(path: Path, number: int) -> tuple[int, int]:
    out = sgdisk("-i", str(number), str(path))
    first = re.search(r"First sector: (\d+)", out)
    last = re.search(r"Last sector: (\d+)", out)
    assert first and last, out
    return int(first.group(1)), int(last.group(1))


def grow(path: Path, name: str | None = "EPHEMERAL") -> gpt.GrowResult:
    with open(path, "r+b") as f:
        return gpt.grow(f, name)


def test_grow_moves_backup_and_extends_ephemeral_to_aligned_end(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "disk.img", 100 * MiB, [("BOOT", "+8M"), ("EPHEMERAL", "0")])
    boot_before = part_range(disk, 1)
    first, old_last = part_range(disk, 2)
    with open(disk, "r+b") as f:  # a marker inside EPHEMERAL must survive
        f.seek(first * 512)
        f.write(b"keep me")
    resize(disk, 300 * MiB)
    assert "secondary header" in sgdisk("-v", str(disk))  # sgdisk sees the problem we fix

    result = grow(disk)

    verify(disk)
    total = 300 * MiB // 512
    last_usable = total - 34
    expected_end = (last_usable + 1) // 2048 * 2048 - 1
    assert result.moved and result.extended
    assert result.old_last_lba == old_last
    assert result.partition is not None and result.partition.last_lba == expected_end
    assert part_range(disk, 2) == (first, expected_end)
    assert part_range(disk, 1) == boot_before
    assert "last usable sector is " + str(last_usable) in sgdisk("-p", str(disk))
    with open(disk, "rb") as f:
        f.seek(first * 512)
        assert f.read(7) == b"keep me"
        f.seek(0)
        mbr = f.read(512)
    (mbr_size,) = struct.unpack_from("<I", mbr, 446 + 12)
    assert mbr[446 + 4] == 0xEE and mbr_size == total - 1  # the protective MBR follows the disk
    with open(disk, "rb") as f:
        table = gpt.read_gpt(f)
    assert not table.needs_grow and table.header.last_usable_lba == last_usable


def test_grow_is_a_no_op_when_the_table_spans_the_disk(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "disk.img", 64 * MiB, [("BOOT", "+8M"), ("EPHEMERAL", "0")])
    before = digest(disk)
    result = grow(disk)
    assert not result.moved and not result.extended
    assert digest(disk) == before
    resize(disk, 128 * MiB)
    assert grow(disk).moved
    after = digest(disk)
    assert not grow(disk).moved
    assert digest(disk) == after


def test_last_partition_not_ephemeral_only_moves_the_backup(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "disk.img", 64 * MiB, [("EPHEMERAL", "+8M"), ("DATA", "0")])
    ranges = [part_range(disk, 1), part_range(disk, 2)]
    resize(disk, 128 * MiB)
    result = grow(disk)
    assert result.moved and not result.extended
    verify(disk)
    assert [part_range(disk, 1), part_range(disk, 2)] == ranges


def test_small_growth_moves_backup_without_shrinking_the_partition(tmp_path: Path) -> None:
    # EPHEMERAL ends on the last MiB boundary of the usable area, as the bakery lays it out.
    disk = make_disk(tmp_path / "disk.img", 64 * MiB, [("BOOT", "+8M"), ("EPHEMERAL", "+54M")])
    before = part_range(disk, 2)
    assert (before[1] + 1) % 2048 == 0
    resize(disk, 64 * MiB + 8 * 1024)  # the usable area does not reach the next MiB boundary
    result = grow(disk)
    assert result.moved and not result.extended
    verify(disk)
    assert part_range(disk, 2) == before


def test_bakery_layout_grown_to_a_bigger_disk(tmp_path: Path) -> None:
    size = layout.min_disk_size()
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(size)
    parts = layout.plan(size, "seed")
    sgdisk(*layout.sgdisk_args(parts, "seed"), str(disk))
    resize(disk, 4 << 30)
    result = grow(disk)
    verify(disk)
    assert result.partition is not None and result.partition.name == "EPHEMERAL"
    first, last = part_range(disk, 6)
    assert first == parts[-1].first_lba and (last + 1) % 2048 == 0
    assert (last + 1) * 512 > (4 << 30) - 2 * MiB
    for p in parts[:-1]:
        assert part_range(disk, p.number) == (p.first_lba, p.last_lba)


def corrupt(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (512 + 48, "header CRC32"),  # last usable LBA of the primary header
        (1024 + 56, "entry array CRC32"),  # a byte of the first entry's name
        (512, "no GPT header"),  # the signature
    ],
)
def test_invalid_table_is_never_touched(tmp_path: Path, offset: int, message: str) -> None:
    disk = make_disk(tmp_path / "disk.img", 64 * MiB, [("BOOT", "+8M"), ("EPHEMERAL", "0")])
    resize(disk, 128 * MiB)
    corrupt(disk, offset)
    before = digest(disk)
    with pytest.raises(gpt.GptError, match=message):
        grow(disk)
    assert digest(disk) == before


def test_disk_smaller_than_its_table_is_refused(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "disk.img", 128 * MiB, [("BOOT", "+8M"), ("EPHEMERAL", "0")])
    resize(disk, 64 * MiB)
    before = digest(disk)
    with pytest.raises(gpt.GptError, match="smaller than the image"):
        grow(disk)
    assert digest(disk) == before


def test_read_gpt_lists_partitions_by_name(tmp_path: Path) -> None:
    disk = make_disk(
        tmp_path / "disk.img", 64 * MiB, [("BOOT", "+8M"), ("ROOT-A", "+16M"), ("EPHEMERAL", "0")]
    )
    with open(disk, "rb") as f:
        table = gpt.read_gpt(f)
    assert [(p.number, p.name) for p in table.partitions] == [(1, "BOOT"), (2, "ROOT-A"), (3, "EPHEMERAL")]
    found = table.find("ROOT-A")
    assert found is not None and (found.first_lba, found.last_lba) == part_range(disk, 2)
    assert table.last_partition == table.find("EPHEMERAL")
