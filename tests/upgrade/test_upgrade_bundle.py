"""The bundle: reproducible, and every damage refused in one sentence before anything is written."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from upgradekit import make_bundle

from talos_os.upgrade import bundle


def test_a_bundle_is_reproducible_and_verifies(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a", "0.2.0")
    b = make_bundle(tmp_path / "b", "0.2.0")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        assert tar.getnames() == ["manifest.json", "vmlinuz", "initramfs.zst", "root.sqsh"]
    seen: list[int] = []
    manifest = bundle.verify(a, "x86_64", seen.append)
    assert manifest.version == "0.2.0" and sum(seen) == sum(p.size for p in manifest.parts.values())


def _rewrite(src: Path, dest: Path, change: dict[str, bytes]) -> Path:
    with tarfile.open(src) as tin, tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tout:
        for member in tin.getmembers():
            data = change.get(member.name, tin.extractfile(member).read())  # type: ignore[union-attr]
            member.size = len(data)
            import io

            tout.addfile(member, io.BytesIO(data))
    return dest


def test_a_flipped_byte_in_the_root_is_a_checksum_refusal(tmp_path: Path) -> None:
    good = make_bundle(tmp_path)
    with tarfile.open(good) as tar:
        root = bytearray(tar.extractfile("root.sqsh").read())  # type: ignore[union-attr]
    root[1000] ^= 0xFF
    bad = _rewrite(good, tmp_path / "bad.upgrade", {"root.sqsh": bytes(root)})
    with pytest.raises(bundle.BundleError, match=r"root\.sqsh does not match its sha256"):
        bundle.verify(bad, "x86_64")


def test_another_architecture_is_refused(tmp_path: Path) -> None:
    other = make_bundle(tmp_path, arch="aarch64")
    with pytest.raises(bundle.BundleError, match="the bundle is for aarch64, but this node is x86_64"):
        bundle.verify(other, "x86_64")


def test_truncated_and_foreign_files_are_refused(tmp_path: Path) -> None:
    good = make_bundle(tmp_path)
    cut = tmp_path / "cut.upgrade"
    cut.write_bytes(good.read_bytes()[:20_000])
    with pytest.raises(bundle.BundleError, match=r"damaged|truncated"):
        bundle.verify(cut, "x86_64")
    junk = tmp_path / "junk.upgrade"
    junk.write_bytes(b"<html>not found</html>" * 100)
    with pytest.raises(bundle.BundleError, match="not an upgrade bundle"):
        bundle.verify(junk, "x86_64")


def test_a_manifest_that_lies_is_refused(tmp_path: Path) -> None:
    good = make_bundle(tmp_path)
    with tarfile.open(good) as tar:
        data = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    data["parts"]["kernel"]["size"] += 1
    bad = _rewrite(good, tmp_path / "lies.upgrade", {"manifest.json": json.dumps(data).encode()})
    with pytest.raises(bundle.BundleError, match=r"vmlinuz is .* bytes, its manifest says"):
        bundle.verify(bad, "x86_64")
    data["parts"]["kernel"]["size"] -= 1
    data["kernel_args"] = "a;reboot"
    bad = _rewrite(good, tmp_path / "args.upgrade", {"manifest.json": json.dumps(data).encode()})
    with pytest.raises(bundle.BundleError, match="kernel arguments"):
        bundle.verify(bad, "x86_64")


def test_a_kernel_that_is_not_a_bzimage_is_refused(tmp_path: Path) -> None:
    good = make_bundle(tmp_path)
    kernel = b"\x7fELF" + b"\0" * 9000
    with tarfile.open(good) as tar:
        data = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    import hashlib

    data["parts"]["kernel"].update(size=len(kernel), sha256=hashlib.sha256(kernel).hexdigest())
    bad = _rewrite(
        good, tmp_path / "elf.upgrade", {"vmlinuz": kernel, "manifest.json": json.dumps(data).encode()}
    )
    with pytest.raises(bundle.BundleError, match="not an x86 bzImage"):
        bundle.verify(bad, "x86_64")
