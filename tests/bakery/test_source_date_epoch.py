"""SOURCE_DATE_EPOCH in the environment: the bake honours it instead of failing in mksquashfs.

mksquashfs refuses the variable next to -all-time/-mkfs-time, which the bake passes (with the same
epoch); the runner keeps the variable from mksquashfs. The fast test runs the real mksquashfs the
way the bake does; the e2e test bakes twice with the variable set and compares the images.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from bakery.fetch import sha256_of
from bakery.image import BakeOptions, bake
from bakery.options import FAST_SQUASHFS_LEVEL
from bakery.tools import run

EPOCH = 1_700_000_000


def _squashfs(tree: Path, out: Path) -> bytes:
    run(["mksquashfs", tree, out, "-noappend", "-comp", "zstd", "-all-root", "-all-time", str(EPOCH),
         "-mkfs-time", str(EPOCH), "-no-xattrs", "-quiet", "-no-progress"], what="mksquashfs")  # fmt: skip
    return out.read_bytes()


def test_mksquashfs_with_source_date_epoch_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=talos\n")
    first = _squashfs(tree, tmp_path / "a.sqsh")
    os.utime(tree / "etc" / "os-release", (1, 1))  # another mtime: the image must not change
    second = _squashfs(tree, tmp_path / "b.sqsh")
    assert first == second
    (mkfs_time,) = struct.unpack_from("<I", first, 8)  # the superblock's creation time
    assert mkfs_time == EPOCH


@pytest.mark.e2e
def test_two_bakes_with_source_date_epoch_are_byte_identical(
    test_lock: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    images = [
        bake(
            BakeOptions(
                platform="kvm",
                out=tmp_path / name,
                lock_path=test_lock,
                locked=True,
                quiet=True,
                squashfs_level=FAST_SQUASHFS_LEVEL,
            )
        )
        for name in ("one", "two")
    ]
    assert sha256_of(images[0].raw) == sha256_of(images[1].raw)
    assert sha256_of(images[0].initramfs) == sha256_of(images[1].initramfs)
