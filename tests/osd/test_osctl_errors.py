"""osctl names the real cause of a failed connection, and refuses malformed endpoints before connecting."""

from __future__ import annotations

import contextlib
import http.server
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from osdenv import Cluster, Node, write_talosconfig

from talos_os import pki, talosconfig
from talos_os.osctl.client import parse_target

OSCTL = [sys.executable, "-c", "from talos_os.osctl.cli import main; main()"]


def run_osctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """osctl as a process: what an operator sees on the terminal, grpc's own stderr lines included."""
    return subprocess.run(
        [*OSCTL, "--talosconfig", str(config), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "value",
    ["[::1", "[::1]x", "[::1]:", "[10.0.0.1]:50000", "[node]", "host:", "a b", "host:0", "host:65536",
     "-e", "bad_host!", "1.2.3.4:5:6", ":50000"],
)  # fmt: skip
def test_malformed_endpoints_are_refused(value: str) -> None:
    with pytest.raises(talosconfig.TalosConfigError, match="expected HOST, HOST:PORT"):
        parse_target(value)


def test_well_formed_endpoints() -> None:
    assert parse_target("::1").address == "[::1]:50000"
    assert parse_target("[::1]").address == "[::1]:50000"
    assert parse_target("[fd00::1]:50001").address == "[fd00::1]:50001"
    assert parse_target("node-1.example.com:443").address == "node-1.example.com:443"
    assert parse_target("10.0.0.1").address == "10.0.0.1:50000"


def test_a_malformed_endpoint_is_one_sentence(cluster: Cluster, tmp_path: Path) -> None:
    config = write_talosconfig(tmp_path / "c", cluster.ca, cluster.client(), ["127.0.0.1"])
    r = run_osctl(config, "-e", "[::1", "version")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "Error: '[::1' opens a '[' it does not close: expected HOST, HOST:PORT, [IPv6] or [IPv6]:PORT"
    ]


def test_a_key_that_does_not_match_the_certificate(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    cert = cluster.client(name="mixed")
    other = cluster.client(name="other")
    mixed = pki.CertKey(cert_pem=cert.cert_pem, key_pem=other.key_pem)
    r = run_osctl(write_talosconfig(tmp_path / "c", cluster.ca, mixed, [node.address]), "version")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "Error: the talosconfig's client key does not belong to its certificate CN=mixed,O=os:admin (crt and "
        "key come from different pairs); put the matching key in the context, or make a fresh talosconfig"
    ]  # and no grpc log lines


@contextlib.contextmanager
def serving(target: object) -> Iterator[int]:
    """A loopback listener handing each connection to ``target(conn)``; its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                target(conn)  # type: ignore[operator]

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_a_plain_text_port_and_a_reset_connection(cluster: Cluster, tmp_path: Path) -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{web.server_address[1]}"
        config = write_talosconfig(tmp_path / "web", cluster.ca, cluster.client(), [address])
        r = run_osctl(config, "version")
        assert r.returncode == 1
        assert r.stderr.strip().splitlines()[-1] == (
            f"error: {address}: the service at {address} does not speak TLS (a plain-text service, such as "
            "HTTP, answered): check the port; osd listens on 50000"
        )
    finally:
        web.shutdown()
        web.server_close()
    with serving(_reset) as port:
        address = f"127.0.0.1:{port}"
        config = write_talosconfig(tmp_path / "reset", cluster.ca, cluster.client(), [address])
        r = run_osctl(config, "version")
        assert r.returncode == 1
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {address}: the connection to {address} was reset"), r.stderr
        assert "client certificate" not in r.stderr


def test_a_refused_client_certificate_is_still_named(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    server_only = pki.issue_certificate(cluster.ca, "srv", organizations=[pki.ROLE_ADMIN], usage="server")
    r = run_osctl(write_talosconfig(tmp_path / "c", cluster.ca, server_only, [node.address]), "version")
    assert r.returncode == 1 and "refused our client certificate during the TLS handshake" in r.stderr


def test_cp_warns_about_what_the_node_left_out(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    """sysfs files claim 4096 bytes and hold fewer: each is padded, and osctl says which."""
    config = write_talosconfig(tmp_path / "c", cluster.ca, cluster.client(), [node.address])
    r = run_osctl(config, "cp", "/sys/kernel/mm/transparent_hugepage", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    warning = next(line for line in r.stderr.splitlines() if "warning:" in line)
    assert warning.startswith(f"{node.address}: warning: ")
    assert "entries changed or vanished during the copy and were left out or padded: " in warning
    assert "/sys/kernel/mm/transparent_hugepage/enabled (shrank while read" in warning
    assert (tmp_path / "out" / "transparent_hugepage" / "enabled").exists()
