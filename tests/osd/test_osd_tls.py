"""Mutual TLS 1.3 of the node API: who gets in, who is refused and how, and the server's identity."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from osdenv import Cluster, Node, T, connect

from talos_os import pki
from talos_os.api.gen import node_pb2 as pb
from talos_os.config import loads
from talos_os.osd.auth import POLICY, IdentityError, accepts_tls12, server_identity

E = pb.Empty()


def reboot_as(node: Node, cert: pki.CertKey | None, **kw: object) -> grpc.RpcError | None:
    """Try Reboot with this client certificate; the error, or None if it got through."""
    with connect(node, cert, **kw) as stub:  # type: ignore[arg-type]
        try:
            stub.Reboot(E, timeout=T)
        except grpc.RpcError as err:
            return err
    return None


def refused_at_handshake(err: grpc.RpcError | None) -> bool:
    """A certificate the TLS layer refuses never reaches a method: the node hangs up mid-handshake."""
    return err is not None and err.code() == grpc.StatusCode.UNAVAILABLE and "Socket closed" in err.details()


@pytest.fixture
def no_actions(node: Node) -> Iterator[list[str]]:
    node.actions.clear()
    yield node.actions
    node.actions.clear()


def test_no_client_certificate(node: Node, no_actions: list[str]) -> None:
    assert refused_at_handshake(reboot_as(node, None))
    assert no_actions == []


def test_self_signed_client_certificate(node: Node, no_actions: list[str]) -> None:
    own = pki.new_os_ca("mallory")  # self-signed, and it even says os:admin nowhere that counts
    assert refused_at_handshake(reboot_as(node, own))
    assert no_actions == []


def test_certificate_from_another_ca(node: Node, no_actions: list[str]) -> None:
    other = pki.issue_client_certificate(pki.new_os_ca("other-cluster"), "admin", pki.ROLE_ADMIN)
    assert refused_at_handshake(reboot_as(node, other))
    assert no_actions == []


def test_expired_certificate(node: Node, cluster: Cluster, no_actions: list[str]) -> None:
    expired = pki.issue_client_certificate(cluster.ca, "old", pki.ROLE_ADMIN, validity=timedelta(minutes=-2))
    assert refused_at_handshake(reboot_as(node, expired))
    assert no_actions == []


def test_server_certificate_is_no_client_certificate(
    node: Node, cluster: Cluster, no_actions: list[str]
) -> None:
    server_only = pki.issue_certificate(cluster.ca, "a-node", organizations=[pki.ROLE_ADMIN], usage="server")
    assert refused_at_handshake(reboot_as(node, server_only))
    assert no_actions == []


def test_reader_may_not_reboot(node: Node, cluster: Cluster, no_actions: list[str]) -> None:
    err = reboot_as(node, cluster.client(pki.ROLE_READER, "ops-viewer"))
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == "Reboot needs os:admin; client certificate 'ops-viewer' has os:reader"
    assert no_actions == []


def test_certificate_without_a_role(node: Node, cluster: Cluster, no_actions: list[str]) -> None:
    roleless = pki.issue_certificate(cluster.ca, "nobody", organizations=["dev"], usage="client")
    err = reboot_as(node, roleless)
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "grants no role" in err.details() and "os:admin or os:reader" in err.details()
    assert no_actions == []


def test_admin_reboot_reaches_the_init(node: Node, cluster: Cluster, no_actions: list[str]) -> None:
    assert reboot_as(node, cluster.client(pki.ROLE_ADMIN)) is None
    assert no_actions == ["reboot"]


def test_client_verifies_the_node(node: Node, cluster: Cluster) -> None:
    # A client trusting another CA refuses the node's certificate.
    err = reboot_as(node, cluster.client(), ca_pem=pki.new_os_ca("elsewhere").cert_pem)
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in err.details()
    # The certificate names the node's IPs and host name, not "localhost".
    with (
        connect(node, cluster.client(pki.ROLE_READER), host="localhost") as stub,
        pytest.raises(grpc.RpcError) as info,
    ):
        stub.Version(E, timeout=T)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification Check failed" in info.value.details()


def _tls_client(node: Node, client: pki.CertKey, version: ssl.TLSVersion, tmp: Path) -> str:
    """Handshake with Python's ssl pinned to one TLS version; the negotiated version."""
    (tmp / "c.pem").write_bytes(client.cert_pem)
    (tmp / "k.pem").write_bytes(client.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=node.osd.ca_pem.decode())
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", node.port), timeout=T) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


def test_tls_12_is_refused_even_with_a_valid_certificate(
    node: Node, cluster: Cluster, tmp_path: Path
) -> None:
    admin = cluster.client()
    # No shared cipher for TLS 1.2: the node hangs up on the client hello.
    with pytest.raises(ssl.SSLError):
        _tls_client(node, admin, ssl.TLSVersion.TLSv1_2, tmp_path)
    assert _tls_client(node, admin, ssl.TLSVersion.TLSv1_3, tmp_path) == "TLSv1.3"
    assert accepts_tls12("127.0.0.1", node.port) is False


def test_the_tls12_probe_sees_a_server_that_accepts_it(cluster: Cluster, tmp_path: Path) -> None:
    """The start-up self-check must be able to fail: against a TLS 1.2 server it says so."""
    server_cert = pki.issue_certificate(cluster.ca, "legacy", ip_addresses=["127.0.0.1"])
    (tmp_path / "s.pem").write_bytes(server_cert.cert_pem)
    (tmp_path / "s.key").write_bytes(server_cert.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with (
                conn,
                ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False) as tls,
                contextlib.suppress(ssl.SSLError, OSError),  # the probe hangs up after the server hello
            ):
                tls.do_handshake()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert accepts_tls12("127.0.0.1", port) is True
        t.join(T)


def test_every_method_is_in_the_policy() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Node"].methods}
    node_policy = {
        m: roles for m, roles in POLICY.items() if not m.startswith("/")
    }  # other services: full names
    assert set(node_policy) == methods
    admin_only = {m for m, roles in node_policy.items() if pki.ROLE_READER not in roles}
    assert admin_only == {
        "Reboot",
        "Shutdown",
        "Reset",
        "ServiceStart",
        "ServiceStop",
        "ServiceRestart",
        "CopyOut",
        "Kubeconfig",
    }


def test_identity_issued_from_the_ca(cluster: Cluster) -> None:
    cert, source = server_identity(cluster.config, ["10.5.0.2", "127.0.0.1", "fd00::2"], "node-1")
    assert source == "issued by machine.ca"
    pki.verify_issued_by(cert.cert, cluster.ca.cert)
    san = cert.cert.extensions.get_extension_for_class(pki.x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(pki.x509.IPAddress)}
    names = set(san.get_values_for_type(pki.x509.DNSName))
    # The node's addresses, its host name, and machine.certSANs (the generated config names 127.0.0.1).
    assert ips >= {"10.5.0.2", "127.0.0.1", "fd00::2"}
    assert "node-1" in names
    assert set(cluster.config.machine.cert_sans) <= ips | names


def test_identity_from_the_config_wins(cluster: Cluster) -> None:
    given = pki.issue_certificate(cluster.ca, "pinned", dns_names=["pinned.example"])
    doc = cluster.config.model_dump(by_alias=True, mode="json", exclude_none=True)
    doc["machine"]["identity"] = {"crt": given.b64_crt(), "key": given.b64_key()}
    cert, source = server_identity(loads_doc(doc), ["10.0.0.1"], "ignored")
    assert source == "machine.identity" and cert == given


def loads_doc(doc: dict[str, object]) -> object:
    import yaml

    return loads(yaml.safe_dump(doc))


def test_worker_without_identity_is_refused(cluster: Cluster) -> None:
    worker = loads(cluster.worker_text)
    with pytest.raises(IdentityError) as info:
        server_identity(worker, ["10.0.0.3"], "worker-1")
    assert "machine.identity" in str(info.value) and "machine.ca carries no key" in str(info.value)


def test_osd_process_refuses_to_start_without_an_identity(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    pki.write_secret(config, cluster.worker_text.encode())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "talos_os.osd",
            "--config",
            str(config),
            "--address",
            "127.0.0.1",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("osd: osd has no server certificate")
    assert "Traceback" not in proc.stderr
