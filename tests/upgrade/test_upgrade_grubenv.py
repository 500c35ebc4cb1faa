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
