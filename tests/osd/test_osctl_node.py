"""The osctl node commands through click's CliRunner, and as real processes, against loopback osd."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from osdenv import Cluster, Node, T, write_talosconfig
from sigint import default_sigint

from talos_os import __version__, pki, talosconfig
from talos_os.osctl.cli import cli
from talos_os.osctl.client import DEFAULT_PORT, parse_target, resolve_targets
from talos_os.osctl.copyout import safe_member
from talos_os.osd.server import Osd

OSCTL = [sys.executable, "-c", "from talos_os.osctl.cli import main; main()"]


@pytest.fixture(scope="module")
def second(node: Node) -> Iterator[Node]:
    """A second osd in front of the same init: a second "node" for -n with several nodes."""
    with Osd(node.osd.identity, node.osd.ca_pem, node.settings, address="127.0.0.1", port=0) as osd:
        yield Node(node.root, osd, node.supervisor, node.control, node.settings, node.trigger)


@pytest.fixture(scope="module")
def admin_config(node: Node, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("osctl") / "talosconfig"
    return write_talosconfig(path, cluster.ca, cluster.client(pki.ROLE_ADMIN, "admin"), [node.address])


@pytest.fixture(scope="module")
def reader_config(node: Node, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("osctl") / "talosconfig"
    return write_talosconfig(path, cluster.ca, cluster.client(pki.ROLE_READER, "viewer"), [node.address])


def osctl(config: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--talosconfig", str(config), *args], input=input, catch_exceptions=False)


def table(output: str) -> list[list[str]]:
    """Rows of an aligned table, split on the 3-space column gaps."""
    return [[c.strip() for c in line.split("   ") if c.strip()] for line in output.strip().splitlines()]


def node_table(output: str, node: str) -> list[list[str]]:
    """A one-node table without its NODE column, checking the column is there (even for one node)."""
    rows = table(output)
    assert rows[0][0] == "NODE" and all(row[0] == node for row in rows[1:]), output
    return [row[1:] for row in rows]


def test_targets() -> None:
    assert parse_target("10.0.0.1").address == f"10.0.0.1:{DEFAULT_PORT}"
    assert parse_target("10.0.0.1:50001").address == "10.0.0.1:50001"
    assert parse_target("fd00::2").address == f"[fd00::2]:{DEFAULT_PORT}"
    assert parse_target("[fd00::2]:7").address == "[fd00::2]:7"
    assert parse_target("node-1.example").host == "node-1.example"
    # No nodes: the first endpoint. Nodes: each directly, taking an endpoint's port when it is the same host.
    assert [t.address for t in resolve_targets(["10.0.0.1:6000", "10.0.0.2"], [])] == ["10.0.0.1:6000"]
    assert [t.address for t in resolve_targets(["10.0.0.1:6000"], ["10.0.0.1", "10.0.0.3"])] == [
        "10.0.0.1:6000",
        f"10.0.0.3:{DEFAULT_PORT}",
    ]


def test_version(admin_config: Path, node: Node) -> None:
    r = osctl(admin_config, "version")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"Client: osctl {__version__}" and lines[1] == "Server:"
    rows = table("\n".join(lines[2:]))
    assert rows[0] == ["NODE", "TAG", "API", "KERNEL", "ARCH", "HOSTNAME"]
    assert rows[1][:4] == [node.address, __version__, "v1", os.uname().release]
    data = json.loads(osctl(admin_config, "version", "-o", "json").output)
    assert data["client"]["tag"] == __version__ and data["servers"][0]["node"] == node.address


def test_services_and_service(admin_config: Path, node: Node) -> None:
    r = osctl(admin_config, "services")
    assert r.exit_code == 0, r.output
    rows = node_table(r.output, node.address)
    assert rows[0] == ["SERVICE", "STATE", "PID", "RESTARTS", "EXIT", "SINCE", "MESSAGE"]
    by_name = {row[0]: row for row in rows[1:]}
    assert by_name["sleeper"][1] == "running" and by_name["sleeper"][2] == str(
        node.supervisor.stats()["sleeper"]
    )
    assert by_name["once"][1:3] == ["finished", "-"]
    records = json.loads(osctl(admin_config, "services", "-o", "json").output)
    assert {r["id"] for r in records} == {"ticker", "sleeper", "once"} and all(
        r["node"] == node.address for r in records
    )
    one = node_table(osctl(admin_config, "service", "once").output, node.address)
    assert len(one) == 2 and one[1][0] == "once"
    missing = osctl(admin_config, "service", "nope")
    assert missing.exit_code == 1 and f"error: {node.address}: no service named 'nope'" in missing.output


def test_service_restart(admin_config: Path, node: Node) -> None:
    pid = node.supervisor.stats()["sleeper"]
    r = osctl(admin_config, "service", "sleeper", "restart")
    assert r.exit_code == 0 and r.output == f"{node.address}: sleeper restarted\n"
    assert node.wait_running("sleeper") != pid


def test_reader_is_refused_admin_commands(reader_config: Path, node: Node) -> None:
    node.actions.clear()
    r = osctl(reader_config, "reboot")
    assert r.exit_code == 1
    assert r.output == (
        f"error: {node.address}: permission denied: Reboot needs os:admin; client certificate 'viewer' has os:reader\n"
    )
    assert osctl(reader_config, "service", "sleeper", "stop").exit_code == 1
    assert node.actions == []
    assert osctl(reader_config, "services").exit_code == 0


def test_reboot_shutdown_reset(admin_config: Path, node: Node) -> None:
    node.actions.clear()
    assert osctl(admin_config, "reboot").output == f"{node.address}: rebooting\n"
    assert osctl(admin_config, "shutdown").output == f"{node.address}: shutting down\n"
    declined = osctl(admin_config, "reset", input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert osctl(admin_config, "reset", "--yes").output == f"{node.address}: resetting\n"
    assert node.actions == ["reboot", "shutdown", "reset"]
    node.actions.clear()


def test_stats_and_ps(admin_config: Path, node: Node) -> None:
    rows = node_table(osctl(admin_config, "stats").output, node.address)
    assert rows[0] == ["NAMESPACE", "ID", "PID", "MEMORY(MB)", "CPU(s)"]
    ticker = next(r for r in rows if r[1] == "ticker")
    assert ticker[0] == "system" and float(ticker[3]) > 1
    r = osctl(admin_config, "ps", "--namespace", "system")
    rows = node_table(r.output, node.address)
    assert rows[0] == ["NAMESPACE", "ID", "IMAGE", "PID", "STATUS"]
    sleeper = next(row for row in rows if row[1] == "sleeper")
    assert sleeper[0] == "system" and sleeper[2].endswith("sleep") and sleeper[4] in ("sleeping", "running")
    everything = json.loads(osctl(admin_config, "ps", "-o", "json").output)
    assert any(p["pid"] == os.getpid() and p["namespace"] == "host" for p in everything)
    assert all(p["namespace"] != "kernel" for p in everything)  # kernel threads only with -a


def test_logs_and_dmesg(admin_config: Path, node: Node) -> None:
    node.tick(2)
    node.wait_log_lines("ticker", node.ticks + 1)
    r = osctl(admin_config, "logs", "ticker", "--tail", "2")
    assert r.exit_code == 0 and r.output == f"tick {node.ticks - 1}\ntick {node.ticks}\n"
    assert osctl(admin_config, "logs", "once").output == "once done\n"
    r = osctl(admin_config, "dmesg", "--tail", "1")
    assert r.output == "[    2.250001] virtio_net virtio0 eth0: link up\n"
    missing = osctl(admin_config, "logs", "nope")
    assert missing.exit_code == 1 and "no service named 'nope'" in missing.output


def test_kubeconfig(admin_config: Path, node: Node, tmp_path: Path) -> None:
    path = node.settings.kubeconfig
    path.parent.mkdir(parents=True, exist_ok=True)
    pki.write_secret(path, b"apiVersion: v1\nkind: Config\n")
    assert osctl(admin_config, "kubeconfig").output == "apiVersion: v1\nkind: Config\n"
    dest = tmp_path / "kubeconfig"
    r = osctl(admin_config, "kubeconfig", str(dest))
    assert r.exit_code == 0 and dest.read_bytes() == path.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_network_mounts_memory(admin_config: Path, node: Node) -> None:
    interfaces = node_table(osctl(admin_config, "interfaces").output, node.address)
    assert interfaces[0] == ["INDEX", "NAME", "MTU", "MAC", "STATE", "ADDRESSES"]
    assert any(row[1] == "lo" and "127.0.0.1/8" in row[5] for row in interfaces)
    routes = node_table(osctl(admin_config, "routes").output, node.address)
    assert routes[0] == ["INTERFACE", "DESTINATION", "GATEWAY", "SOURCE", "METRIC", "TABLE", "PROTOCOL"]
    mounts = node_table(osctl(admin_config, "mounts").output, node.address)
    assert mounts[0] == ["FILESYSTEM", "TYPE", "SIZE", "USED", "AVAILABLE", "USE%", "MOUNTED ON"]
    assert any(row[-1] == "/" for row in mounts)
    memory = node_table(osctl(admin_config, "memory").output, node.address)
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert memory[0][0] == "TOTAL" and int(memory[1][0]) == total >> 20
    assert json.loads(osctl(admin_config, "memory", "-o", "json").output)[0]["total"] == total


def test_cp_and_read(admin_config: Path, reader_config: Path, node: Node, tmp_path: Path) -> None:
    src = tmp_path / "node" / "etc"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    (src / "link").symlink_to("a.txt")
    (src / "escape").symlink_to("/etc/passwd")  # absolute: not recreated on the client
    out = tmp_path / "out"
    r = osctl(admin_config, "cp", str(src), str(out))
    assert r.exit_code == 0, r.output
    assert (out / "etc" / "a.txt").read_text() == "alpha\n"
    assert (out / "etc" / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert os.readlink(out / "etc" / "link") == "a.txt"
    assert not (out / "etc" / "escape").exists() and not (out / "etc" / "escape").is_symlink()
    shared = node.public / "a.txt"  # readers read only under the node's reader trees
    shared.write_text("alpha\n")
    shared.chmod(0o644)
    assert osctl(reader_config, "read", str(shared)).output == "alpha\n"
    shared.chmod(0o600)
    refused = osctl(reader_config, "read", str(shared))
    assert refused.exit_code == 1 and "needs os:admin" in refused.output
    assert osctl(admin_config, "read", str(shared)).output == "alpha\n"


def test_cp_extracts_only_safe_members(tmp_path: Path) -> None:
    def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.type, member.linkname, member.mode = kind, link, mode
        return member

    dest = str(tmp_path)
    assert safe_member(info("../escape"), dest) is None
    assert safe_member(info("/etc/passwd"), dest) is None
    assert safe_member(info("a/../../up"), dest) is None
    assert safe_member(info("l", tarfile.SYMTYPE, "/etc/shadow"), dest) is None
    assert safe_member(info("d/l", tarfile.SYMTYPE, "../../outside"), dest) is None
    assert safe_member(info("h", tarfile.LNKTYPE, "../outside"), dest) is None
    assert safe_member(info("dev", tarfile.CHRTYPE), dest) is None
    assert safe_member(info("fifo", tarfile.FIFOTYPE), dest) is None
    ok = safe_member(info("d/l", tarfile.SYMTYPE, "../file"), dest)
    assert ok is not None and ok.linkname == "../file"
    setuid = safe_member(info("bin/tool", mode=0o4755), dest)
    assert setuid is not None and setuid.mode == 0o755 and setuid.uid == os.getuid()


def test_several_nodes_in_parallel(admin_config: Path, node: Node, second: Node) -> None:
    nodes = f"{node.address},{second.address}"  # both endpoints: each contacted as itself, not relayed
    r = osctl(admin_config, "-e", nodes, "-n", nodes, "services")
    rows = table(r.output)
    assert r.exit_code == 0 and rows[0][0] == "NODE"
    assert {row[0] for row in rows[1:]} == {node.address, second.address}
    logs = osctl(admin_config, "-e", nodes, "-n", nodes, "logs", "once").output.splitlines()
    assert sorted(logs) == sorted([f"{node.address}: once done", f"{second.address}: once done"])


def test_unreachable_node_fails_the_command_but_not_the_others(admin_config: Path, node: Node) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    both = f"{node.address},{dead}"
    r = osctl(admin_config, "-e", both, "-n", both, "version")
    assert r.exit_code == 1
    assert node.address in r.output  # the live node still answered
    assert (
        f"error: {dead}: cannot reach the node API at {dead}: connection refused (is osd running there?)"
        in r.output
    )


def test_certificate_problems_are_one_sentence(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    # Checked before connecting: an expired certificate, or one the context's CA did not sign.
    expired = pki.issue_client_certificate(cluster.ca, "old", validity=timedelta(minutes=-2))
    r = osctl(write_talosconfig(tmp_path / "a", cluster.ca, expired, [node.address]), "version")
    assert r.exit_code == 1
    assert r.output.startswith("Error: the talosconfig's client certificate CN=old,O=os:admin expired on ")
    foreign = pki.issue_client_certificate(pki.new_os_ca("other"), "x")
    r = osctl(write_talosconfig(tmp_path / "b", cluster.ca, foreign, [node.address]), "version")
    assert r.exit_code == 1 and "is not signed by the context's CA" in r.output
    # Another cluster's talosconfig: its CA does not trust the node.
    other = pki.new_os_ca("other")
    r = osctl(
        write_talosconfig(tmp_path / "c", other, pki.issue_client_certificate(other, "x"), [node.address]),
        "version",
    )
    assert r.exit_code == 1
    assert r.output.splitlines()[-1] == (
        f"error: {node.address}: the node at {node.address} presented a certificate the talosconfig's CA "
        "does not trust (another cluster's node, or a wrong context)"
    )
    # Looks fine here, refused by the node (a server-only certificate): the node hangs up mid-handshake.
    server_only = pki.issue_certificate(cluster.ca, "srv", organizations=[pki.ROLE_ADMIN], usage="server")
    r = osctl(write_talosconfig(tmp_path / "d", cluster.ca, server_only, [node.address]), "version")
    assert r.exit_code == 1
    assert r.output.splitlines()[-1].startswith(
        f"error: {node.address}: the node at {node.address} refused our client certificate during the TLS handshake"
    )


def test_completion_script(admin_config: Path) -> None:
    r = osctl(admin_config, "completion", "bash")
    assert r.exit_code == 0 and "_OSCTL_COMPLETE" in r.output and "complete" in r.output


# --- real processes -----------------------------------------------------------------------------------


def test_osctl_and_osd_as_processes(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    """``python -m talos_os.osd`` serving, ``osctl`` calling it: the commands as operators run them."""
    config = tmp_path / "config.yaml"
    pki.write_secret(config, cluster.config_text.encode())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    osd = subprocess.Popen(
        [sys.executable, "-m", "talos_os.osd", "--config", str(config), "--control-socket", str(node.control.path),
         "--kmsg", str(node.settings.kmsg), "--address", "127.0.0.1", "--port", str(port)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert osd.stderr is not None
        for line in osd.stderr:
            if "serving the node API" in line:
                break
        else:
            pytest.fail(f"osd exited with {osd.wait()}")
        for line in osd.stderr:  # the TLS policy is proven beside serving, and said
            if "TLS 1.2 refused (checked in" in line:
                break
        else:
            pytest.fail(f"osd exited with {osd.wait()} before proving TLS 1.2 is refused")
        tc = write_talosconfig(tmp_path / "talosconfig", cluster.ca, cluster.client(), [f"127.0.0.1:{port}"])
        env = {**os.environ, "TALOSCONFIG": str(tc)}
        version = subprocess.run([*OSCTL, "version"], env=env, capture_output=True, text=True, timeout=60)
        assert version.returncode == 0, version.stderr
        assert f"127.0.0.1:{port}   {__version__}   v1" in version.stdout
        # Follow a service's log; lines printed meanwhile come through, then ^C ends it quietly.
        node.tick(1)
        node.wait_log_lines("ticker", node.ticks + 1)
        follow = subprocess.Popen(
            [*OSCTL, "logs", "-f", "--tail", "1", "ticker"],
            env=env, stdout=subprocess.PIPE, text=True, preexec_fn=default_sigint,
        )  # fmt: skip
        try:
            lines = _lines(follow)
            assert lines.get(timeout=T) == f"tick {node.ticks}\n"  # the stream is open
            node.tick(2)
            got = [lines.get(timeout=T), lines.get(timeout=T)]
            assert got == [f"tick {node.ticks - 1}\n", f"tick {node.ticks}\n"]
        finally:
            follow.send_signal(signal.SIGINT)
            assert follow.wait(T) == 130
        # Unreachable: one clear line, exit 1.
        down = subprocess.run(
            [*OSCTL, "-e", "127.0.0.1:1", "version"], env=env, capture_output=True, text=True
        )
        assert down.returncode == 1
        assert (
            down.stderr.strip()
            == "error: 127.0.0.1:1: cannot reach the node API at 127.0.0.1:1: connection refused (is osd running there?)"
        )
    finally:
        osd.send_signal(signal.SIGTERM)
        assert osd.wait(T) == 0


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's stdout lines as they come (a reader thread; ends at EOF)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_global_flags_after_the_command(admin_config: Path, node: Node, tmp_path: Path) -> None:
    """talosctl's positions: -n, --talosconfig and -o may follow the command."""
    elsewhere = tmp_path / "tc"
    cfg = talosconfig.load(admin_config)
    cfg.current().endpoints = ["127.0.0.1:1"]  # nobody listens there
    talosconfig.save(cfg, elsewhere)
    r = CliRunner().invoke(
        cli, ["version", "-n", node.address, "--talosconfig", str(admin_config), "-o", "json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["servers"][0]["node"] == node.address
    # the innermost --talosconfig wins, wherever the outer one was
    r = CliRunner().invoke(
        cli, ["--talosconfig", str(elsewhere), "services", "--talosconfig", str(admin_config)]
    )
    assert r.exit_code == 0 and table(r.output)[1][0] == node.address
    # the root's -o is every command's default
    r = CliRunner().invoke(cli, ["--talosconfig", str(admin_config), "-o", "yaml", "memory"])
    assert r.exit_code == 0 and yaml.safe_load(r.output)[0]["node"] == node.address


def test_json_and_yaml_records_are_plain(admin_config: Path, node: Node) -> None:
    """ISO 8601 times, no protobuf presence flags: has_exit_code becomes exit_code null."""
    records = {r["id"]: r for r in json.loads(osctl(admin_config, "services", "-o", "json").output)}
    assert all(not key.startswith("has_") for r in records.values() for key in r)
    assert records["sleeper"]["exit_code"] is None and records["once"]["exit_code"] == 0
    since = datetime.fromisoformat(records["sleeper"]["since"].replace("Z", "+00:00"))
    assert since.tzinfo is not None and abs((datetime.now(UTC) - since).total_seconds()) < 3600
    as_yaml = {r["id"]: r for r in yaml.safe_load(osctl(admin_config, "services", "-o", "yaml").output)}
    assert as_yaml == records
