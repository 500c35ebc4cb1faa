"""The host-side machinery for real, without a VM: the forwarder across a throwaway namespace,
destroy of a half-made cluster, `osctl health` naming every failing node, refusals of the CLI."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bakery.image import BakeResult
from bakery.options import FAST_SQUASHFS_LEVEL
from talos_os import talosconfig
from talos_os.cluster import destroy, forward, netns, vm
from talos_os.cluster.state import ClusterState, plan_nodes
from talos_os.config.generate import generate
from talos_os.osctl.cli import cli

root_only = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (network namespaces)"
)


def test_forward_target_specs() -> None:
    assert forward.parse_target("n-1:osd=10.5.0.2:50000") == ("n-1:osd", "10.5.0.2", 50000)
    with pytest.raises(ValueError, match="not KEY=HOST:PORT"):
        forward.parse_target("10.5.0.2:50000")


def echo_server_in(ns: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    code = (
        "import socket\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('10.77.0.1', {port})); s.listen(); print('up', flush=True)\n"
        "while True:\n"
        "    c,_=s.accept(); d=c.recv(100); c.sendall(b'echo:'+d); c.close()\n"
    )
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


@root_only
def test_the_forwarder_listens_on_host_loopback_and_connects_inside_the_namespace(tmp_path: Path) -> None:
    ns = f"talos-fwdtest-{os.getpid()}"
    netns.run(["ip", "netns", "add", ns])
    server = None
    pid = None
    try:
        netns.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        netns.run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        netns.run(["ip", "-n", ns, "addr", "add", "10.77.0.1/24", "dev", "br0"])
        netns.run(["ip", "-n", ns, "link", "set", "br0", "up"])
        server = echo_server_in(ns, 7000, tmp_path)
        on_host = socket.socket()
        on_host.bind(("127.0.0.1", 0))
        on_host.listen()
        reverse = {"10.77.0.1:7100": on_host.getsockname()[1]}
        pid, ports = forward.start(
            ns, {"a": ("10.77.0.1", 7000), "closed": ("10.77.0.1", 7001)}, tmp_path, reverse=reverse
        )
        assert vm.daemon_pid(tmp_path / "forwarder.pid") == pid
        with socket.create_connection(("127.0.0.1", ports["a"]), timeout=10) as s:
            s.sendall(b"hi")
            assert s.recv(100) == b"echo:hi"
        with socket.create_connection(("127.0.0.1", ports["closed"]), timeout=20) as s:
            assert s.recv(100) == b""  # nothing listening at the far end: the connection just closes
        # from inside the namespace, the bridge address's port 7100 reaches the host's loopback server
        client = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "import socket; s=socket.create_connection(('10.77.0.1', 7100), 10); s.sendall(b'up'); s.recv(10)"],
        )  # fmt: skip
        on_host.settimeout(20)
        conn, _ = on_host.accept()
        assert conn.recv(10) == b"up"
        conn.sendall(b"ok")
        conn.close()
        assert client.wait(20) == 0
        on_host.close()
        # the cluster's address lives only inside the namespace (checked locally, no traffic is sent)
        assert "10.77.0.1" not in netns.run(["ip", "-o", "addr", "show"]).stdout
    finally:
        if pid is not None:
            vm.kill(pid)
        if server is not None:
            server.kill()
        for left in netns.pids_in(ns):
            vm.kill(left)
        netns.delete(ns)
    assert not netns.exists(ns)


def made_state(tmp_path: Path) -> ClusterState:
    nodes = plan_nodes("half", controlplanes=1, workers=1)
    state = ClusterState(
        name="half", directory=tmp_path / "clusters" / "half", cidr="10.5.0.0/24", image="/x.raw",
        nodes=nodes,
    )  # fmt: skip
    state.save()
    configs = state.file("configs")
    configs.mkdir()
    for name, text in generate("half", "https://10.5.0.2:6443").files().items():
        (configs / name).write_text(text)
    for node in nodes:
        state.node_dir(node).mkdir(parents=True)
    return state


def test_destroy_removes_a_half_made_cluster_and_never_kills_a_stranger(tmp_path: Path) -> None:
    state = made_state(tmp_path)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (state.node_dir(state.nodes[0]) / "qemu.pid").write_text(f"{stranger.pid}\n")  # a reused pid
        (state.directory / "dnsmasq.pid").write_text(f"{stranger.pid}\n")
        tc = tmp_path / "talosconfig"
        user = talosconfig.loads(generate("other", "https://10.9.0.2:6443").talosconfig)
        user.merge(talosconfig.loads(generate("half", "https://10.5.0.2:6443").talosconfig))
        talosconfig.save(user, tc)
        state.talosconfig, state.context = str(tc), "half"
        state.save()
        done = destroy.destroy(state.directory, "half")
        assert stranger.poll() is None
    finally:
        stranger.kill()
    assert not state.directory.exists()
    assert done[-1].startswith("removed ") and any("removed context half" in d for d in done)
    after = talosconfig.load(tc)
    assert list(after.contexts) == ["other"] and after.context == "other"
    assert destroy.destroy(state.directory, "half") == []  # again: nothing left to do


def test_health_names_every_failing_node_and_exits_non_zero(tmp_path: Path) -> None:
    state = made_state(tmp_path)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # a port nothing listens on
    state.forwards = {f"{n.name}:{w}": port for n in state.nodes for w in ("osd", "api", "etcd")}
    state.save()
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["health", "--cluster", "half", "--state", str(tmp_path / "clusters")], catch_exceptions=False
    )
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(
        line.startswith("FAIL  osd answers on every node: half-controlplane-1: osd does not answer")
        for line in lines
    )
    assert any("half-worker-1: osd does not answer" in line for line in lines)
    assert any(
        line.startswith("FAIL  etcd members healthy and in agreement: half-controlplane-1") for line in lines
    )
    assert any(line.startswith("FAIL  all nodes Ready: no admin kubeconfig yet") for line in lines)
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 120


def test_cli_refusals_are_one_sentence(tmp_path: Path) -> None:
    runner = CliRunner()
    state = tmp_path / "clusters"
    missing = runner.invoke(
        cli, ["cluster", "create", "--name", "x", "--image", "/nope.raw", "--state", str(state)]
    )
    assert missing.exit_code == 1
    if os.geteuid() == 0:
        assert missing.output.strip() == (
            "Error: image /nope.raw does not exist: bake one (`talos-bake raw --platform kvm`) or pass --image PATH"
        )
    gone = runner.invoke(cli, ["cluster", "destroy", "--name", "x", "--state", str(state)])
    assert gone.exit_code == 1 and "there is no cluster x under" in gone.output
    no_health = runner.invoke(cli, ["health", "--cluster", "x", "--state", str(state)])
    assert no_health.exit_code == 1 and "no cluster x under" in no_health.output
    listing = runner.invoke(cli, ["cluster", "show", "--state", str(state), "-o", "json"])
    assert listing.exit_code == 0 and listing.output.strip() == "[]"


@pytest.mark.e2e
def test_without_image_create_bakes_one_with_the_bakery_cli(
    baked_image: BakeResult, test_lock: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cluster create` without --image runs `talos-bake raw --platform kvm` (the step cache makes a
    repeat bake a copy) and boots what it printed; a failing bake is one sentence."""
    from talos_os.cluster import create as create_mod

    monkeypatch.setenv("TALOS_BAKE_LOCK", str(test_lock))
    said: list[str] = []
    raw = create_mod.bake(["--locked", "--out", str(tmp_path), "--squashfs-level", str(FAST_SQUASHFS_LEVEL)],
                          said.append)  # fmt: skip
    assert raw == tmp_path / "talos-kvm.raw" and raw.stat().st_size == baked_image.raw.stat().st_size
    assert said == [f"baking the image: raw --platform kvm -o json --locked --out {tmp_path} "
                    f"--squashfs-level {FAST_SQUASHFS_LEVEL}"]  # fmt: skip
    with pytest.raises(create_mod.ClusterError, match="the bake failed"):
        create_mod.bake(["--disk-size", "1K"], said.append)
