"""The relay for real on loopback: a front osd (a control plane's) forwards calls naming another node to
that node's osd over mutual TLS, with a certificate minted for the caller's role."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from osdenv import Cluster, Node, connect, rpc_error, write_talosconfig

from talos_os import pki
from talos_os.api.gen import node_pb2 as pb
from talos_os.api.gen import upgrade_pb2 as upb
from talos_os.api.gen import upgrade_pb2_grpc as upb_grpc
from talos_os.osctl.cli import cli as osctl
from talos_os.osctl.client import Target, explain
from talos_os.osd.auth import Caller, server_identity
from talos_os.osd.relay import Relay, RelayError, requested_target, role_of, split_target
from talos_os.osd.server import Osd, Settings
from talos_os.upgrade import bundle as upgrade_bundle

T = 20.0


def front_osd(cluster: Cluster, ca: pki.CertKey | None) -> Osd:
    identity, _ = server_identity(cluster.config, ["127.0.0.1"], "cp-front")
    relay = Relay(ca, cluster.ca.cert_pem, lambda: ["cp-front"])
    # No control socket behind it: a call served here (not relayed) fails, so answers prove the relay.
    settings = Settings(control_socket=Path("/nonexistent/init.sock"), relay=relay)
    osd = Osd(identity, cluster.ca.cert_pem, settings, address="127.0.0.1", port=0)
    osd.start()
    relay.own_port = osd.port
    return osd


@pytest.fixture(scope="module")
def front(cluster: Cluster) -> Iterator[Osd]:
    osd = front_osd(cluster, cluster.ca)
    yield osd
    osd.stop(grace=0)


def md(node: Node) -> tuple[tuple[str, str], ...]:
    return (("nodes", node.address),)


def test_admin_calls_are_relayed_unary_and_streaming(cluster: Cluster, node: Node, front: Osd) -> None:
    with connect_front(front, cluster.client()) as stub:
        services = stub.ServiceList(pb.Empty(), metadata=md(node), timeout=T)
        assert {"ticker", "sleeper"} <= {s.id for s in services.services}
        logs = b"".join(c.bytes for c in stub.Logs(pb.LogsRequest(id="once"), metadata=md(node), timeout=T))
        assert b"once done" in logs
        # Without the metadata the front serves the call itself (and has no init behind it).
        err = rpc_error(lambda: stub.ServiceList(pb.Empty(), timeout=T))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        # The far end's errors come back with its code, naming the node.
        err = rpc_error(lambda: stub.ServiceStart(pb.ServiceRequest(id="nope"), metadata=md(node), timeout=T))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.details()


def test_an_upload_stream_is_relayed_to_the_far_node(cluster: Cluster, node: Node, front: Osd) -> None:
    """``osctl -e CP -n WORKER upgrade --image FILE`` streams the bundle through the control plane."""
    me = cluster.client()
    creds = grpc.ssl_channel_credentials(front.ca_pem, me.key_pem, me.cert_pem)
    sent: list[int] = []

    def chunks() -> Iterator[upb.UpgradeChunk]:
        for i in range(3):
            sent.append(i)
            yield upb.UpgradeChunk(size=3 << 10 if i == 0 else 0, data=b"x" * 1024)

    with grpc.secure_channel(f"127.0.0.1:{front.port}", creds) as ch:
        stub = upb_grpc.UpgradeStub(ch)  # type: ignore[no-untyped-call]
        err = rpc_error(lambda: stub.Upload(chunks(), metadata=md(node), timeout=T))
    # The far node's osd answered: its init (a test supervisor) has no upgrade agent, so the op is
    # unknown there (the init's bad_request: INVALID_ARGUMENT). Served by the front instead, the call
    # would have found no init at all (UNAVAILABLE).
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "unknown op 'upgrade_slots'" in err.details()


def test_a_reader_stays_a_reader_at_the_far_end(cluster: Cluster, node: Node, front: Osd) -> None:
    with connect_front(front, cluster.client(pki.ROLE_READER, "alice")) as stub:
        assert stub.ServiceList(pb.Empty(), metadata=md(node), timeout=T).services
        # Refused by the front's own policy before anything is forwarded...
        err = rpc_error(lambda: stub.Reboot(pb.Empty(), metadata=md(node), timeout=T))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "'alice' has os:reader" in err.details()
        # ...and the far end, which sees a reader, refuses it the machine config (a secret).
        secret = str(node.settings.secret_paths[0])
        err = rpc_error(lambda: stub.Read(pb.ReadRequest(path=secret), metadata=md(node), timeout=T))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "holds secrets" in err.details()
    with connect_front(front, cluster.client()) as stub:  # an admin gets it through the relay
        data = b"".join(c.bytes for c in stub.Read(pb.ReadRequest(path=secret), metadata=md(node), timeout=T))
        assert data == node.settings.secret_paths[0].read_bytes()
    assert node.actions == []


def test_workers_cannot_relay(cluster: Cluster, node: Node) -> None:
    osd = front_osd(cluster, None)
    try:
        with connect_front(osd, cluster.client()) as stub:
            err = rpc_error(lambda: stub.Version(pb.Empty(), metadata=md(node), timeout=T))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "it is a worker, without the OS CA key" in err.details() and "(-e)" in err.details()
    finally:
        osd.stop(grace=0)


def test_an_osd_without_a_relay_refuses_calls_naming_another_node(cluster: Cluster, node: Node) -> None:
    with connect(node, cluster.client()) as stub:
        err = rpc_error(lambda: stub.Version(pb.Empty(), metadata=(("nodes", "10.5.0.9"),), timeout=T))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not relay" in err.details()


def test_unreachable_and_malformed_targets(cluster: Cluster, front: Osd) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with connect_front(front, cluster.client()) as stub:
        err = rpc_error(
            lambda: stub.Version(pb.Empty(), metadata=(("nodes", f"127.0.0.1:{free}"),), timeout=T)
        )
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details().startswith(f"the control plane cannot reach osd on 127.0.0.1:{free}: ")
        # osctl passes the relay's sentence on, not "cannot reach the node API at <the endpoint>"
        target = Target(f"127.0.0.1:{free}", "127.0.0.1", front.port, relay=f"127.0.0.1:{free}")
        assert explain(err, target) == err.details()
        err = rpc_error(lambda: stub.Version(pb.Empty(), metadata=(("nodes", "a,b"),), timeout=T))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "relay one node per call" in err.details()


def test_osctl_relays_through_the_endpoint(cluster: Cluster, node: Node, front: Osd, tmp_path: Path) -> None:
    tc = write_talosconfig(tmp_path / "tc", cluster.ca, cluster.client(), [f"127.0.0.1:{front.port}"])
    runner = CliRunner()
    args = ["--talosconfig", str(tc), "-e", f"127.0.0.1:{front.port}", "-n", node.address]
    r = runner.invoke(osctl, [*args, "services", "-o", "json"])
    assert r.exit_code == 0, r.output
    assert f'"node": "{node.address}"' in r.output and '"ticker"' in r.output
    r = runner.invoke(osctl, [*args, "logs", "once"])
    assert r.exit_code == 0 and "once done" in r.output
    # The context's endpoint relays too (talosctl's way): no -e needed.
    r = runner.invoke(osctl, ["--talosconfig", str(tc), "-n", node.address, "services", "-o", "json"])
    assert r.exit_code == 0 and '"ticker"' in r.output, r.output


def test_pure_parts() -> None:
    assert split_target("10.5.0.3") == ("10.5.0.3", 50000)
    assert split_target("[fd00::3]:50001") == ("fd00::3", 50001)
    assert split_target("fd00::3") == ("fd00::3", 50000)
    for bad in ("", "a:b", "h:70000", "x" * 300):
        with pytest.raises(RelayError):
            split_target(bad)
    assert requested_target(None) is None and requested_target((("other", "x"),)) is None
    assert requested_target((("nodes", "10.5.0.3"),)) == "10.5.0.3"
    with pytest.raises(RelayError):
        requested_target((("nodes", "10.5.0.3"), ("nodes", "10.5.0.4")))
    assert role_of(Caller("a", frozenset({pki.ROLE_READER}))) == pki.ROLE_READER
    assert role_of(Caller("a", frozenset({pki.ROLE_READER, pki.ROLE_ADMIN}))) == pki.ROLE_ADMIN
    relay = Relay(None, b"", lambda: ["cp-1", "10.5.0.2"], own_port=50000)
    assert relay.is_self("10.5.0.2", 50000) and not relay.is_self("10.5.0.2", 50001)
    assert not relay.is_self("10.5.0.3", 50000)


def connect_front(osd: Osd, cert: pki.CertKey):  # type: ignore[no-untyped-def]
    class Front:
        pass

    f = Front()
    f.osd = osd  # type: ignore[attr-defined]
    f.port = osd.port  # type: ignore[attr-defined]
    return connect(f, cert)  # type: ignore[arg-type]


def test_osctl_upgrade_rollback_and_apply_config_reach_the_node_not_the_endpoint(
    cluster: Cluster, node: Node, front: Osd, tmp_path: Path
) -> None:
    """Every kind of call carries the node's name: the upload (a client stream) and the Upgrade and
    Machine services too. Answered by the far node's init (which has no upgrade agent and takes no
    config), not by the front, which has no init at all."""
    tc = write_talosconfig(tmp_path / "tc", cluster.ca, cluster.client(), [f"127.0.0.1:{front.port}"])
    args = ["--talosconfig", str(tc), "-e", f"127.0.0.1:{front.port}", "-n", node.address]
    parts = {name: tmp_path / name for name in ("kernel", "initramfs", "root")}
    for part in parts.values():
        part.write_bytes(b"x" * 4096)  # the far node refuses before it reads them
    bundle = tmp_path / "next.upgrade"
    with bundle.open("wb") as out:
        upgrade_bundle.create(out, upgrade_bundle.manifest_for("0.2.0", "x86_64", "6.1", "", parts), parts, 0)
    config = tmp_path / "worker.yaml"
    config.write_text(cluster.worker_text)
    runner = CliRunner()
    for command in (
        ["upgrade", "--image", str(bundle)],
        ["rollback"],
        ["apply-config", "--file", str(config)],
    ):
        r = runner.invoke(osctl, [*args, *command])
        assert r.exit_code != 0 and "unknown op" in r.output, (command, r.output)
        assert "/nonexistent" not in r.output, (command, r.output)  # the front's (absent) init
