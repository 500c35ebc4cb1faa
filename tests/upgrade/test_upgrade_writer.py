"""The writer against a disk of plain files: what lands where, in which order, and what a refusal leaves."""

from __future__ import annotations

from pathlib import Path

import pytest
from upgradekit import FileDisk, make_bundle

from talos_os.upgrade import bundle, grubenv, writer


def test_install_writes_the_other_slot_and_arms_it_once(tmp_path: Path) -> None:
    disk = FileDisk(tmp_path)
    source = make_bundle(tmp_path, "0.2.0", args="talos.test=x")
    running_before = disk.roots["A"].read_bytes()
    phases: list[str] = []
    written = writer.install(source, disk, "A", arch="x86_64", progress=lambda p, _d, _t: phases.append(p))
    assert written.slot == "B" and written.version == "0.2.0"
    manifest = bundle.describe(source)
    root = disk.roots["B"].read_bytes()
    assert bundle.file_sha256(disk.boot_dir / "boot/B/vmlinuz") == manifest.parts["kernel"].sha256
    assert bundle.file_sha256(disk.boot_dir / "boot/B/initramfs.zst") == manifest.parts["initramfs"].sha256
    import hashlib

    assert hashlib.sha256(root[: manifest.parts["root"].size]).hexdigest() == manifest.parts["root"].sha256
    assert disk.roots["A"].read_bytes() == running_before, "the running slot is never touched"
    assert (disk.boot_dir / "boot/A/vmlinuz").read_bytes() == b"old kernel"
    env = disk.env()
    assert env["next_entry"] == "talos-B" and env["saved_entry"] == "talos-A"
    assert env["talos_B"] == "trying:0.2.0" and env["talos_B_args"] == "talos.test=x"
    assert phases.index("verifying") < phases.index("writing root") < phases.index("checking root")
    assert not list((disk.boot_dir / "boot/B").glob(".*")), "no temporary files left"


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda t: make_bundle(t, arch="aarch64"), "the bundle is for aarch64"),
        (lambda t: make_bundle(t, root_size=3 << 20), "does not fit slot B's partition"),
    ],
)
def test_refusals_write_nothing(tmp_path: Path, make: object, error: str) -> None:
    disk = FileDisk(tmp_path)
    before = {p: p.read_bytes() for p in [*disk.roots.values(), disk.boot_dir / "boot/grub/grubenv"]}
    source = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(bundle.BundleError, match=error):
        writer.install(source, disk, "A", arch="x86_64")
    assert {p: p.read_bytes() for p in before} == before
    assert not disk.mounts or not any(disk.mounts), "BOOT was never mounted writable"


def test_a_crash_while_writing_the_root_leaves_the_running_slot_the_default(tmp_path: Path) -> None:
    disk = FileDisk(tmp_path)
    source = make_bundle(tmp_path)
    calls = 0

    def die(phase: str, _done: int, _total: int) -> None:
        nonlocal calls
        if phase == "writing root":
            calls += 1
            if calls == 1:
                raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        writer.install(source, disk, "A", arch="x86_64", progress=die)
    env = grubenv.read(disk.boot_dir / "boot/grub/grubenv")
    assert env["saved_entry"] == "talos-A" and "next_entry" not in env and env["talos_B"] == "writing"
