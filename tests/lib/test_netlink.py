"""pyroute2 through talos_os.lib.netlink: the node's classes without the package's kitchen sink."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_init_loads_rtnetlink_and_dhcp_but_not_the_rest_of_pyroute2() -> None:
    code = "import sys, talos_os.init.main; print(sorted(m for m in sys.modules if m.startswith(('pyroute2.ndb', 'pyroute2.nftables', 'pyroute2.ipset', 'pyroute2.plan9', 'sqlite3'))))"
    assert _run(code) == "[]"


def test_a_top_level_name_still_loads_the_whole_package() -> None:
    code = (
        "from talos_os.lib import netlink\n"
        "import pyroute2\n"
        "from pyroute2 import NDB, IPRoute, config\n"
        "print(IPRoute is netlink.IPRoute, pyroute2.AsyncIPRoute is netlink.AsyncIPRoute, NDB.__name__, config.__name__)"
    )
    assert _run(code) == "True True NDB pyroute2.config"


def test_nothing_else_in_talos_os_imports_pyroute2() -> None:
    offenders = []
    for path in (REPO / "talos_os").rglob("*.py"):
        if path == REPO / "talos_os" / "lib" / "netlink.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "pyroute2" or n.startswith("pyroute2.") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders
