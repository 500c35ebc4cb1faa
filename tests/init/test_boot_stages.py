"""Stage 1 and the hardening phase, on the host: sysfs and /proc/sys are trees in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from talos_os.init import stage1
from talos_os.init.hardening import KSPP_CMDLINE, KSPP_SYSCTLS, missing_kspp, write_sysctls
from talos_os.lib.cmdline import parse


def test_missing_kspp_names_each_absent_or_overridden_parameter() -> None:
    assert missing_kspp(parse(" ".join(KSPP_CMDLINE) + " console=ttyS0")) == []
    assert missing_kspp(parse("init_on_alloc=1 slab_nomerge pti=off")) == ["init_on_free=1", "pti=on"]
    assert missing_kspp(parse("init_on_alloc=1 init_on_free=1 slab_nomerge pti=on init_on_free=0")) == [
        "init_on_free=1"
    ]


def test_sysctls_are_written_and_absent_keys_reported(tmp_path: Path) -> None:
    for key in KSPP_SYSCTLS:
        if key != "kernel.yama.ptrace_scope":  # a kernel without Yama
            path = tmp_path / key.replace(".", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("0")
    assert write_sysctls(KSPP_SYSCTLS, tmp_path) == ["kernel.yama.ptrace_scope"]
    assert (tmp_path / "kernel/kptr_restrict").read_text() == "2"
    assert (tmp_path / "fs/protected_regular").read_text() == "2"


def _block(tmp_path: Path, name: str, uevent: str) -> None:
    (tmp_path / name).mkdir(parents=True)
    (tmp_path / name / "uevent").write_text(uevent)


def test_root_partition_is_found_by_gpt_name(tmp_path: Path) -> None:
    _block(tmp_path, "vda", "MAJOR=254\nDEVNAME=vda\nDEVTYPE=disk\n")
    _block(tmp_path, "vda3", "DEVNAME=vda3\nDEVTYPE=partition\nPARTNAME=BOOT\n")
    _block(tmp_path, "vda4", "DEVNAME=vda4\nDEVTYPE=partition\nPARTNAME=ROOT-A\n")
    assert stage1.find_partition("ROOT-A", tmp_path) == "/dev/vda4"
    assert stage1.find_partition("ROOT-B", tmp_path) is None
    assert stage1.find_partition("ROOT-A", tmp_path / "missing") is None


def test_wait_for_gives_up_with_what_it_waited_for() -> None:
    calls: list[float] = []
    with pytest.raises(TimeoutError, match="no partition labelled ROOT-A appeared"):
        stage1.wait_for(lambda: None, 0.05, "partition labelled ROOT-A", sleep=calls.append)
    assert calls
    assert stage1.wait_for(lambda: "/dev/vda4", 1, "x") == "/dev/vda4"


def test_free_initramfs_deletes_everything_but_the_new_root(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/x.pyc").write_bytes(b"x")
    (tmp_path / "init").write_text("#!")
    (tmp_path / "sysroot/usr").mkdir(parents=True)
    (tmp_path / "sysroot/usr/keep").write_text("k")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "usr/lib/modules/6.1/kernel").mkdir(parents=True)
    (tmp_path / "usr/lib/modules/6.1/kernel/squashfs.ko").write_bytes(b"ko")
    stage1.free_initramfs(str(tmp_path), keep=str(tmp_path / "sysroot"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sysroot"]
    assert (tmp_path / "sysroot/usr/keep").read_text() == "k"


def test_free_initramfs_never_walks_into_the_new_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new root holds the whole OS (and /proc, /sys once moved): the walk must prune it, not skip it."""
    (tmp_path / "sysroot/usr/lib/deep").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    walked: list[str] = []
    real_walk = stage1.os.walk

    def spying_walk(top: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for dirpath, dirnames, filenames in real_walk(top, *args, **kwargs):  # type: ignore[arg-type]
            walked.append(dirpath)
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(stage1.os, "walk", spying_walk)
    stage1.free_initramfs(str(tmp_path), keep=str(tmp_path / "sysroot"))
    assert not [p for p in walked if p.startswith(str(tmp_path / "sysroot"))]
    assert (tmp_path / "sysroot/usr/lib/deep").is_dir()
    assert not (tmp_path / "etc").exists()


def test_stage2_runs_under_importtime_when_the_command_line_asks() -> None:
    assert stage1.init_argv(parse("console=ttyS0")) == ["/sbin/init"]
    assert stage1.init_argv(parse("talos.importtime=1")) == [
        "/usr/bin/python3.11",
        "-I",
        "-X",
        "importtime",
        "/sbin/init",
    ]


def test_stage2_starts_with_two_malloc_arenas_and_the_late_modules() -> None:
    env = stage1.init_env({"TERM": "linux", "MALLOC_ARENA_MAX": "8"}, ["virtio_net", "fw_cfg"])
    assert env == {"TERM": "linux", "MALLOC_ARENA_MAX": "2", "TALOS_LATE_MODULES": "virtio_net fw_cfg"}
    assert stage1.LATE_MODULES_ENV not in stage1.init_env({}, None)
