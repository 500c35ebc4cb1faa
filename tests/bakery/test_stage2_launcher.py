"""The stage 2 launcher the bakery writes to /sbin/init, run by a real interpreter against a stand-in
init: it parks osd before the init's imports, keeps the collector off while they run, then freezes
what they made and turns the collector back on before handing over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bakery.rootfs import STAGE2_LAUNCHER

STAND_IN_EARLY = """
import gc
def park():
    return f"parked (collector on while parking: {gc.isenabled()})"
"""
STAND_IN_MAIN = """
import gc
print("imported with the collector on:", gc.isenabled())
def main(parked):
    print(parked)
    print("main: collector on:", gc.isenabled(), "frozen objects:", gc.get_freeze_count() > 0)
    raise SystemExit(0)
"""


def test_the_launcher_imports_without_the_collector_and_freezes_what_it_imported(tmp_path: Path) -> None:
    init = tmp_path / "talos_os" / "init"
    init.mkdir(parents=True)
    (tmp_path / "talos_os" / "__init__.py").write_text("")
    (init / "__init__.py").write_text("")
    (init / "early.py").write_text(STAND_IN_EARLY)
    (init / "main.py").write_text(STAND_IN_MAIN)
    body = STAGE2_LAUNCHER.split("\n", 1)[1]  # the shebang's -I would hide the stand-in
    result = subprocess.run(
        [sys.executable, "-c", body], capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "imported with the collector on: False",
        "parked (collector on while parking: False)",
        "main: collector on: True frozen objects: True",
    ]
