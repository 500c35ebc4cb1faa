"""A wheel built from a checkout without generated stubs carries them: `pip install .` gives a working osctl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "talos_os", "platforms", "bakery")


def test_wheel_has_the_stubs_and_osctl_runs_from_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("gen", "__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    assert not (src / "talos_os" / "api" / "gen").exists()
    dist = tmp_path / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("talos_os-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"talos_os/api/gen/node_pb2.py", "talos_os/api/gen/node_pb2_grpc.py"} <= names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked), "HOME": str(tmp_path)}
    probe = (
        "import talos_os.osctl.node_cmds as n, sys; print(n.__file__); sys.argv[0] = 'osctl'; n.pb.Empty()"
    )
    ran = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(unpacked / "talos_os" / "osctl" / "node_cmds.py")
