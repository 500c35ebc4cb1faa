"""GRUB's environment block: the exact format GRUB reads, written in place at its size."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from talos_os.upgrade import grubenv


def test_render_is_1024_bytes_header_then_pairs_padded_with_hashes() -> None:
    data = grubenv.render({"saved_entry": "talos-A", "talos_A": "good:0.1.0", "empty": ""})
    assert len(data) == 1024
    assert data.startswith(b"# GRUB Environment Block\nsaved_entry=talos-A\ntalos_A=good:0.1.0\n#")
    assert b"empty" not in data and data.endswith(b"#")
    assert grubenv.parse(data) == {"saved_entry": "talos-A", "talos_A": "good:0.1.0"}


def test_values_with_newlines_and_backslashes_round_trip_escaped() -> None:
    env = {"talos_failed": "line one\nline two \\ end"}
    data = grubenv.render(env)
    assert b"line one\\nline two \\\\ end" in data
    assert grubenv.parse(data) == env


def test_too_much_state_and_bad_names_are_refused() -> None:
    with pytest.raises(grubenv.GrubEnvError, match="more than the block's 1024"):
        grubenv.render({"x": "y" * 1100})
    with pytest.raises(grubenv.GrubEnvError, match="not a GRUB variable name"):
        grubenv.render({"bad key": "1"})
    with pytest.raises(grubenv.GrubEnvError, match="header is missing"):
        grubenv.parse(b"saved_entry=x\n")


def test_write_keeps_the_file_and_its_size(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    grubenv.write(path, {"saved_entry": "talos-A"})
    inode = path.stat().st_ino
    grubenv.write(path, {"saved_entry": "talos-B", "next_entry": "talos-A"})
    assert path.stat().st_ino == inode and path.stat().st_size == 1024
    assert grubenv.read(path) == {"saved_entry": "talos-B", "next_entry": "talos-A"}
    path.write_bytes(b"x" * 2000)
    with pytest.raises(grubenv.GrubEnvError, match="2000 bytes"):
        grubenv.write(path, {})


@pytest.mark.skipif(
    shutil.which("grub-editenv") is None, reason="grub-editenv (grub-common) is not installed"
)
def test_grub_editenv_reads_what_we_write_and_we_read_what_it_writes(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    grubenv.write(path, {"saved_entry": "talos-B", "talos_B": "trying:0.2.0"})
    listed = subprocess.run(["grub-editenv", path, "list"], capture_output=True, text=True, check=True).stdout
    assert listed.splitlines() == ["saved_entry=talos-B", "talos_B=trying:0.2.0"]
    subprocess.run(["grub-editenv", path, "set", "next_entry=talos-A"], check=True)
    assert grubenv.read(path)["next_entry"] == "talos-A"
    assert os.path.getsize(path) == 1024


GRUB_PYTHON = Path("/usr/lib/xen-4.17/lib/python")


def _cfg() -> str:
    from bakery import bootloader

    return bootloader.grub_cfg([("A", "talos.root=ROOT-A"), ("B", "talos.root=ROOT-B")])


def test_the_menu_boots_saved_entry_and_next_entry_once() -> None:
    cfg = _cfg()
    assert cfg.startswith("load_env\nset default=talos-A\n")
    once = cfg.index('if [ -n "${next_entry}" ]; then')
    assert cfg.index("    set next_entry=\n", once) < cfg.index("    save_env next_entry\n", once)
    assert 'menuentry "talos-os B" --id talos-B {' in cfg
    assert "linux /boot/B/vmlinuz talos.root=ROOT-B panic=10 $talos_B_args" in cfg


@pytest.mark.skipif(
    shutil.which("grub-script-check") is None, reason="grub-script-check (grub-common) is not installed"
)
def test_grub_accepts_the_menu_script(tmp_path: Path) -> None:
    path = tmp_path / "grub.cfg"
    path.write_text(_cfg())
    subprocess.run(["grub-script-check", str(path)], check=True)


@pytest.mark.skipif(
    not (GRUB_PYTHON / "grub" / "GrubConf.py").exists(), reason="Xen's pygrub is not installed"
)
def test_pygrub_still_reads_the_menu(tmp_path: Path) -> None:
    path = tmp_path / "grub.cfg"
    path.write_text(_cfg())
    script = (
        "import sys; from grub.GrubConf import Grub2ConfigFile as G; c = G(sys.argv[1]); "
        "print(c.default); [print(i.title, i.kernel[1], i.initrd[1], i.args) for i in c.images]"
    )
    env = {**os.environ, "PYTHONPATH": str(GRUB_PYTHON)}
    out = subprocess.run(
        ["python3", "-c", script, str(path)], capture_output=True, text=True, env=env, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].startswith("talos-os A /boot/A/vmlinuz /boot/A/initramfs.zst talos.root=ROOT-A panic=10")
    assert lines[2].startswith("talos-os B /boot/B/vmlinuz /boot/B/initramfs.zst talos.root=ROOT-B")
