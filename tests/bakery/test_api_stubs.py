"""The node API stubs: generated from the proto (only when it changed) and into an image's site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bakery.rootfs import api_stubs
from talos_os.api import build

REPO = Path(__file__).resolve().parents[2]


def test_generate_only_when_the_proto_changed(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert build.generate(build.API_DIR, out) is True
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in build.outputs(out))
    assert build.generate(build.API_DIR, out) is False
    assert build.up_to_date(build.API_DIR, out)
    stale = out / "node_pb2.py"
    os.utime(stale, (1, 1))  # older than the proto: regenerate
    assert not build.up_to_date(build.API_DIR, out)
    assert build.generate(build.API_DIR, out) is True
    # The stubs import each other through the package, not as top-level modules.
    assert "from talos_os.api.gen import node_pb2 as" in (out / "node_pb2_grpc.py").read_text()


def test_the_checkout_stubs_are_current_and_ignored() -> None:
    assert build.up_to_date()  # tests/conftest.py generated them
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "talos_os/api/gen/node_pb2.py"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0


def test_bakery_generates_the_stubs_into_the_image_tree(tmp_path: Path) -> None:
    """What the bakery does after installing the wheels: stubs from the wheel's own proto."""
    site = tmp_path / "usr/lib/python3/dist-packages"
    shutil.copytree(REPO / "talos_os", site / "talos_os", ignore=shutil.ignore_patterns("gen", "__pycache__"))
    api_stubs(site)
    gen = site / "talos_os" / "api" / "gen"
    assert {p.name for p in gen.iterdir()} >= {"__init__.py", "node_pb2.py", "node_pb2_grpc.py"}
    # They import with the image's tree alone on the path (and the runtime's protobuf/grpcio).
    probe = (
        "import talos_os.api.gen.node_pb2_grpc as g, talos_os.api.gen.node_pb2 as pb; "
        "print(g.NodeStub.__name__, pb.DESCRIPTOR.package, g.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["NodeStub", "talos.os.v1", str(gen / "node_pb2_grpc.py")]
