"""A parked osd has imported everything before its go: serving (certificate, grpc server, TLS
check, the init's network answer) loads no further module, so none is read from the node's
compressed root while the boot waits for the API. And osd stays lean: it never loads netlink
(pyroute2, the init's) nor any of the init's own modules (the supervisor, the upgrade agent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from talos_os.config.generate import generate
from talos_os.init.control import ControlServer, network_handlers

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import talos_os.osd.__main__ as osd
osd.preload()
before = set(sys.modules)
args = osd.parse_args(["--config", sys.argv[1], "--control-socket", sys.argv[2], "--port", "0",
                       "--address", "127.0.0.1"])
server = osd.build(args, osd.start_config(args.config))
server.start()
server.stop(grace=0)
print(sorted(m for m in sys.modules if m.startswith("pyroute2")))  # netlink is the init's
print(sorted(m for m in sys.modules if m.startswith(("talos_os.init", "talos_os.upgrade.agent"))))
print(sorted(set(sys.modules) - before))
"""


def test_serving_imports_nothing_a_parked_osd_has_not_loaded(tmp_path: Path) -> None:
    config = tmp_path / "init.yaml"
    config.write_text(generate("parked", "https://127.0.0.1:6443").files()["init.yaml"])
    with ControlServer(tmp_path / "init.sock", network_handlers(), allowed_uids={os.getuid()}) as init:
        result = subprocess.run([sys.executable, "-c", PROBE, str(config), str(init.path)],
                                capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cannot list" not in result.stderr, result.stderr  # the addresses came from the init
    netlink, init, imported = result.stdout.strip().splitlines()[-3:]
    assert netlink == "[]", result.stdout + result.stderr  # osd served without loading pyroute2
    assert init == "[]", result.stdout + result.stderr  # nor the init's supervisor or upgrade agent
    assert imported == "[]", result.stdout + result.stderr
