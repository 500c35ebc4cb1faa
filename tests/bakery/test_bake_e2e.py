"""End to end: the baked default image boots under SeaBIOS and OVMF, obeys the rootfs rules,
is reproducible, and an interrupted bake leaves no final-named file."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sigint import default_sigint

from bakery import policy, qemu
from bakery.fetch import sha256_of
from bakery.image import KSPP_ARGS, BakeOptions, BakeResult, bake, to_qcow2
from bakery.options import FAST_SQUASHFS_LEVEL
from bakery.stepcache import StepCache
from bakery.tools import which
from talos_os import __version__

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 300.0


def _partition(image: BakeResult, name: str, dest: Path) -> Path:
    manifest = json.loads(image.manifest.read_text())
    part = next(p for p in manifest["partitions"] if p["name"] == name)
    with open(image.raw, "rb") as src, open(dest, "wb") as out:
        src.seek(part["first_lba"] * 512)
        out.write(src.read((part["last_lba"] - part["first_lba"] + 1) * 512))
    return dest


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_image_boots_to_the_init_banner(baked_image: BakeResult, firmware: str) -> None:
    with qemu.start(baked_image.raw, firmware=firmware) as vm:
        match, seconds = vm.wait_for(qemu.BANNER, BOOT_TIMEOUT)
        assert match.group(1) == __version__ and match.group(2) == "kvm"
        cmdline = next(line for line in vm.lines if "Command line:" in line)
        for word in KSPP_ARGS.split():
            assert word in cmdline.split()
        assert "[talos]" in vm.output and "stage1" in vm.output
    print(f"{firmware}: banner after {seconds:.1f} s")


def test_test_mode_powers_off_cleanly(baked_image: BakeResult) -> None:
    manifest = json.loads(baked_image.manifest.read_text())
    vm = qemu.start(baked_image.raw, kernel=baked_image.kernel, initrd=baked_image.initramfs,
                    append=manifest["cmdline"] + " talos.test=poweroff")  # fmt: skip
    with vm:
        vm.wait_for(qemu.BANNER, BOOT_TIMEOUT)
        assert vm.wait_exit(120) == 0
        assert "powering off" in vm.output


def test_rootfs_has_no_shell_sshd_package_manager_or_setuid(baked_image: BakeResult, tmp_path: Path) -> None:
    root = _partition(baked_image, "ROOT-A", tmp_path / "root.sqsh")
    listing = subprocess.run([which("unsquashfs"), "-lls", "-d", "", str(root)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    entries = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0][0] in "-dlcbps" and len(fields[0]) == 10:
            path = fields[5] if len(fields) == 6 else " ".join(fields[5:]).split(" -> ")[0]
            entries.append((path, policy.mode_from_ls(fields[0])))
    paths = {p for p, _ in entries}
    assert len(entries) > 1000
    assert "/usr/sbin/init" in paths and "/usr/bin/python3.11" in paths
    assert "/usr/bin/containerd" in paths and "/usr/sbin/runc" in paths
    assert policy.violations_in_listing(entries) == []
    assert not any(p.endswith(("/bin/sh", "/bash", "/dash", "/busybox", "/sshd")) for p in paths)
    assert not any("/python3.11/test/" in p or "/idlelib/" in p or "/tkinter/" in p for p in paths)


def test_initramfs_has_no_shell(baked_image: BakeResult) -> None:
    raw = subprocess.run(["zstd", "-dc", str(baked_image.initramfs)], capture_output=True, check=True).stdout
    names = subprocess.run(["cpio", "-t"], input=raw, capture_output=True, check=True).stdout.decode().split()
    assert "init" in names and "usr/bin/python3.11" in names
    assert not {n.rsplit("/", 1)[-1] for n in names} & policy.FORBIDDEN_NAMES


def test_manifest_records_what_went_in(baked_image: BakeResult) -> None:
    m = json.loads(baked_image.manifest.read_text())
    assert m["sha256"] == sha256_of(baked_image.raw)
    assert m["size_apparent"] == 2 << 30 and m["size_allocated"] < 400 << 20
    assert m["kernel"]["package"].startswith("linux-image-") and "cloud" in m["kernel"]["package"]
    assert "python3.11-minimal" in m["packages"] and "pydantic" in m["wheels"]
    assert "boto3" not in m["wheels"] and "libvirt-python" not in m["wheels"] and "pycdlib" not in m["wheels"]
    assert m["squashfs_bytes"] > 0 and m["initramfs_bytes"] > 0
    assert m["options"]["squashfs-level"] == FAST_SQUASHFS_LEVEL  # the tests' fast bake, recorded
    assert "virtio_blk" in m["initramfs_modules"] and "squashfs" in m["initramfs_modules"]


def test_qcow2_conversion(baked_image: BakeResult, tmp_path: Path) -> None:
    out = to_qcow2(baked_image.raw, tmp_path / "talos.qcow2")
    info = json.loads(subprocess.run([which("qemu-img"), "info", "--output=json", str(out)], capture_output=True,
                                     text=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2" and info["virtual-size"] == 2 << 30


def _steps(image: BakeResult) -> dict[str, dict[str, Any]]:
    """The manifest's record of each step: its key, and whether it came from the cache."""
    steps: dict[str, dict[str, Any]] = json.loads(image.manifest.read_text())["steps"]
    return steps


def _ran(image: BakeResult) -> set[str]:
    return {name for name, step in _steps(image).items() if not step["cached"]}


def test_a_bake_from_nothing_matches_a_bake_from_the_cache(
    baked_image: BakeResult, test_lock: Path, tmp_path: Path
) -> None:
    """Every step run afresh (an empty step cache; the same downloads) gives the bytes the cached steps
    give; then damaged entries (a truncated BOOT filesystem, a changed byte in the disk) are rebuilt."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for kind in ("debs", "wheels"):  # downloads are not steps: share them rather than fetch them again
        (cache / kind).symlink_to(BakeOptions().cache / kind)

    def bake_into(name: str, cache: Path | None = None) -> BakeResult:
        options = BakeOptions(
            out=tmp_path / name,
            lock_path=test_lock,
            locked=True,
            quiet=True,
            squashfs_level=FAST_SQUASHFS_LEVEL,
        )
        return bake(options if cache is None else dataclasses.replace(options, cache=cache))

    try:
        fresh = bake_into("fresh", cache)
        from_cache = bake_into("cached")
        assert _ran(fresh) == set(_steps(fresh)) and _ran(from_cache) == set()
        assert {n: s["key"] for n, s in _steps(fresh).items()} == {
            n: s["key"] for n, s in _steps(from_cache).items()
        }
        assert sha256_of(fresh.raw) == sha256_of(from_cache.raw) == sha256_of(baked_image.raw)
        assert fresh.data["sha256"] == from_cache.data["sha256"] == sha256_of(fresh.raw)
        assert sha256_of(fresh.initramfs) == sha256_of(baked_image.initramfs)

        entries = {e.step: e for e in StepCache(cache).entries()}
        with open(entries["boot"].out / "boot.ext4", "r+b") as f:
            f.truncate(1 << 20)
        with open(entries["disk"].out / "disk.raw", "r+b") as f:
            f.seek(1 << 20)
            f.write(b"\xff")
        repaired = bake_into("repaired", cache)
        assert _ran(repaired) == {"boot", "disk"}
        assert sha256_of(repaired.raw) == sha256_of(baked_image.raw)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # a whole set of step outputs: do not leave it to pytest


def test_a_platform_change_reruns_only_the_boot_and_disk_steps(
    baked_image: BakeResult, test_lock: Path, tmp_path: Path
) -> None:
    options = BakeOptions(
        out=tmp_path, lock_path=test_lock, locked=True, quiet=True, squashfs_level=FAST_SQUASHFS_LEVEL
    )
    other = bake(
        dataclasses.replace(options, platform="xen", config_url=f"http://127.0.0.1:1/{uuid.uuid4().hex}.yaml")
    )
    assert _ran(other) == {"boot", "disk"}
    assert _steps(other)["squashfs"]["key"] == _steps(baked_image)["squashfs"]["key"]
    assert (
        "talos.platform=xen" in str(other.data["cmdline"])
        and other.data["sha256"] != baked_image.data["sha256"]
    )
    for name in ("boot", "disk"):  # one-off outputs (a config URL never used again)
        StepCache(options.cache).discard(name, _steps(other)[name]["key"])


# Runs talos-bake with one change: right after `cp` has filled the image's temporary file, the
# process sends itself SIGINT (a real Ctrl-C through the real handlers) and waits for it. Polling for
# the file from outside raced: with every step cached the copy, fsync and rename take under a second.
_INTERRUPT_AFTER_COPY = """
import os, signal, sys, time
from pathlib import Path
import bakery.image
real = bakery.image.run
def run(cmd, **kw):
    done = real(cmd, **kw)
    if cmd[0] == "cp" and Path(cmd[-1]).name.startswith(".talos-kvm.raw.partial-"):
        print(f"interrupting while {Path(cmd[-1]).name} holds the copy", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)
    return done
bakery.image.run = run
sys.argv[0] = "talos-bake"
from bakery.cli import main
main()
"""


def test_interrupted_bake_leaves_no_final_named_file(
    baked_image: BakeResult, test_lock: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "TALOS_BAKE_LOCK": str(test_lock),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(  # a relative --out, as users type it
        [sys.executable, "-c", _INTERRUPT_AFTER_COPY, "raw", "--out", "out", "--locked",
         "--squashfs-level", str(FAST_SQUASHFS_LEVEL)],  # the steps baked_image cached: only the copy runs
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, preexec_fn=default_sigint,
    )  # fmt: skip
    assert "holds the copy" in done.stderr, done.stderr[-3000:]
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not (out / "talos-kvm.raw").exists()
    assert not list(out.glob("talos-kvm.raw*"))
    assert not list(out.glob(".talos-kvm.raw.partial-*")), "the temporary image is removed"
    assert not list(out.glob(".bake-*")), "the work directory is cleaned up"
