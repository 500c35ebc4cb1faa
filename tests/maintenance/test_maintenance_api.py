"""The maintenance API as a process on loopback, driven by the real osctl: version and disks without a
client certificate, the fingerprint pinned, every other call refused, bad configs refused with their
errors (nothing handed to the init), a good one handed over and the server gone."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from talos_os import maintenance
from talos_os.api.gen import node_pb2 as npb
from talos_os.api.gen import node_pb2_grpc as npb_grpc
from talos_os.config.generate import generate
from talos_os.maintenance import tls
from talos_os.osctl.client import Target
from talos_os.osctl.machine_cmds import pinned_channel

OSCTL = str(Path(sys.executable).with_name("osctl"))


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    node: str
    fingerprint: str
    handoff: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    cert, key = tls.self_signed(maintenance.SERVER_NAME)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    port = _free_port()
    handoff = tmp_path / "handoff.yaml"
    argv = [sys.executable, "-m", "talos_os.maintenance", "--cert", str(tmp_path / "c.pem"), "--key",
            str(tmp_path / "k.pem"), "--handoff", str(handoff), "--port", str(port), "--console",
            str(tmp_path / "console.log"), "--kmsg", "/dev/null"]  # fmt: skip
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    try:
        yield Server(proc, f"127.0.0.1:{port}", tls.fingerprint(cert), handoff)
    finally:
        proc.kill()
        proc.wait()


def osctl(*args: str) -> subprocess.CompletedProcess[str]:
    # No talosconfig at all: --insecure needs none.
    return subprocess.run(
        [OSCTL, "--talosconfig", "/nonexistent", *args], capture_output=True, text=True, timeout=60
    )


def test_maintenance_api_serves_only_what_configuring_needs(server: Server, tmp_path: Path) -> None:
    pin = ["--cert-fingerprint", server.fingerprint.upper()]
    version = osctl("version", "--insecure", "-n", server.node, *pin)
    assert version.returncode == 0, version.stderr
    assert server.node in version.stdout and "v1" in version.stdout
    unpinned = osctl("version", "--insecure", "-n", server.node)
    assert (
        unpinned.returncode == 0
        and f"certificate not pinned (SHA-256 {server.fingerprint})" in unpinned.stderr
    )
    wrong = osctl("version", "--insecure", "-n", server.node, "--cert-fingerprint", "0" * 64)
    assert (
        wrong.returncode == 1
        and f"presented a certificate with fingerprint {server.fingerprint}" in wrong.stderr
    )
    disks = osctl("disks", "--insecure", "-n", server.node, *pin, "-o", "yaml")
    assert disks.returncode == 0, disks.stderr
    assert isinstance(yaml.safe_load(disks.stdout), list)

    with (
        pinned_channel(
            Target(server.node, "127.0.0.1", int(server.node.rsplit(":", 1)[1])), server.fingerprint, print
        ) as ch,
        pytest.raises(grpc.RpcError) as refused,
    ):
        npb_grpc.NodeStub(ch).ServiceList(npb.Empty(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == maintenance.REFUSED

    configs = generate("maint", "https://10.5.0.2:6443")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("machine: [\n")
    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text(configs.worker.replace("type: worker", "type: master"))
    for path, expected in ((bad_yaml, "invalid YAML"), (wrong_type, "machine.type (line")):
        result = osctl("apply-config", "--insecure", "-n", server.node, *pin, "--file", str(path))
        assert result.returncode == 1 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not server.handoff.exists() and server.proc.poll() is None

    good = tmp_path / "worker.yaml"
    good.write_text(configs.worker)
    dry = osctl("apply-config", "--insecure", "-n", server.node, *pin, "--file", str(good), "--dry-run")
    assert dry.returncode == 0 and "dry run: config accepted" in dry.stdout
    assert not server.handoff.exists()
    applied = osctl("apply-config", "--insecure", "-n", server.node, *pin, "--file", str(good))
    assert applied.returncode == 0, applied.stderr
    assert "config accepted: the node boots with it" in applied.stdout
    assert server.handoff.read_bytes() == good.read_bytes()
    assert server.handoff.stat().st_mode & 0o777 == 0o600
    assert server.proc.wait(30) == 0, "the insecure API closes once it has a config"
