"""trustd for real on 127.0.0.1: TLS verified against the OS CA, the token, the policy, the worker's
retries, and osd starting with what trustd issued."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from talos_os import pki
from talos_os.config import MachineConfig, loads
from talos_os.config.generate import generate
from talos_os.osd.auth import IdentityError, server_identity
from talos_os.trustd import KIND_KUBELET, KIND_OS, client, policy
from talos_os.trustd.server import Authorities, Trustd, TrustdError, build


@pytest.fixture(scope="module")
def configs() -> tuple[MachineConfig, MachineConfig]:
    gen = generate("trust", "https://127.0.0.1:6443")
    return loads(gen.init), loads(gen.worker)


@pytest.fixture(scope="module")
def server(configs: tuple[MachineConfig, MachineConfig]) -> object:
    init, _worker = configs
    trustd = build(init, ["127.0.0.1"], "cp-1", address="127.0.0.1", port=0)
    trustd.start()
    yield trustd
    trustd.stop()


def endpoint(server: Trustd) -> str:
    return f"https://127.0.0.1:{server.port}"


def sans(pem: bytes) -> tuple[list[str], list[str]]:
    san = pki.load_certificate(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName)), [
        str(i) for i in san.get_values_for_type(x509.IPAddress)
    ]


def test_worker_gets_both_certificates_and_osd_starts_with_its_identity(
    server: Trustd,
    configs: tuple[MachineConfig, MachineConfig],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    init, worker = configs
    # The worker's config carries the endpoints (pointed here) and the token, but no OS CA key.
    assert worker.machine.ca.key is None and worker.machine.token == init.machine.token
    worker = worker.model_copy(
        update={
            "machine": worker.machine.model_copy(
                update={"trustd": type(worker.machine.trustd)(endpoints=[endpoint(server)])}
            )
        }
    )
    with caplog.at_level(logging.INFO, logger="trustd"):
        assert client.run(worker, "worker-1", "10.5.0.3", ["10.5.0.3", "127.0.0.1"], root=tmp_path) == 0
    osd_cert = tmp_path / "var/lib/talos/identity/osd.crt"
    osd_key = tmp_path / "var/lib/talos/identity/osd.key"
    kubelet_cert = tmp_path / "var/lib/kubelet/pki/kubelet.crt"
    assert sans(osd_cert.read_bytes()) == (["worker-1"], ["10.5.0.3"])  # loopback is not the node's name
    assert osd_key.stat().st_mode & 0o777 == 0o600
    pki.verify_issued_by(pki.load_certificate(osd_cert.read_bytes()), init.machine.ca.certificate())
    pki.verify_issued_by(pki.load_certificate(kubelet_cert.read_bytes()), init.cluster.ca.certificate())
    issued = [r.getMessage() for r in caplog.records if "issued" in r.getMessage()]
    assert len(issued) == 2 and "for worker-1 (worker-1, 10.5.0.3)" in issued[0]
    # osd takes trustd's certificate: the worker has no other way to an identity.
    pair, source = server_identity(worker, ["10.5.0.3"], "worker-1", issued=(osd_cert, osd_key))
    assert pair.cert_pem == osd_cert.read_bytes() and source.startswith("issued by trustd")
    with pytest.raises(IdentityError, match="trustd has issued none"):
        server_identity(worker, [], "worker-1", issued=(tmp_path / "none.crt", osd_key))
    # A reboot keeps what it has: no second request, the same key.
    before = osd_key.read_bytes()
    assert client.run(worker, "worker-1", "10.5.0.3", ["10.5.0.3"], root=tmp_path) == 0
    assert osd_key.read_bytes() == before
    # A new address makes it ask again, with the key it already has.
    assert client.usable(client.wanted(worker, tmp_path)[0], "worker-1", "10.5.0.9") is not None


def test_wrong_token_is_refused_and_logged_on_both_sides(
    server: Trustd,
    configs: tuple[MachineConfig, MachineConfig],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    init, worker = configs
    want = client.wanted(worker, tmp_path)[0]
    slept: list[float] = []
    with caplog.at_level(logging.INFO, logger="trustd"), pytest.raises(client.RequestError, match="token"):
        client.obtain(
            want,
            endpoints=[endpoint(server)],
            trust_pem=init.machine.ca.crt_pem,
            token="aaaaaa.bbbbbbbbbbbbbbbb",
            hostname="worker-1",
            addresses=["10.5.0.3"],
            sleep=slept.append,
            attempts=3,
        )
    assert slept == [2.0, 4.0]  # backoff between attempts
    assert not want.cert_path.exists()
    refused = [r.getMessage() for r in caplog.records if "wrong token" in r.getMessage()]
    assert len(refused) == 3 and "from ipv4:127.0.0.1" in refused[0]
    out = capsys.readouterr().out
    assert "trustd refused the request: the token is not this cluster's machine.token; retry 1 in 2 s" in out


def test_trustd_is_verified_against_the_os_ca(server: Trustd, tmp_path: Path) -> None:
    other = pki.new_os_ca("other")
    key = pki.new_ecdsa_key()
    csr = pki.new_csr(key, "w", dns_names=["w"], ip_addresses=["10.5.0.3"])
    with pytest.raises(client.RequestError, match="trustd at"):
        client.request(endpoint(server), other.cert_pem, "x", csr, KIND_OS, timeout=10)


def test_requests_for_control_plane_names_or_roles_are_refused(
    server: Trustd, configs: tuple[MachineConfig, MachineConfig]
) -> None:
    init, _ = configs
    key = pki.new_ecdsa_key()
    token, trust = init.machine.token, init.machine.ca.crt_pem
    cases = {
        "no loopback address": pki.new_csr(key, "w", dns_names=["w"], ip_addresses=["127.0.0.1", "10.5.0.3"]),
        "belongs to the control plane": pki.new_csr(
            key, "w", dns_names=["kubernetes.default.svc"], ip_addresses=["10.5.0.3"]
        ),
        "an organization": pki.new_csr(key, "w", [pki.ROLE_ADMIN], ip_addresses=["10.5.0.3"]),
        "names no IP address": pki.new_csr(key, "w", dns_names=["w"]),
    }
    for why, csr in cases.items():
        with pytest.raises(client.RequestError, match=why):
            client.request(endpoint(server), trust, token, csr, KIND_KUBELET, timeout=10)
    with pytest.raises(client.RequestError, match="unknown certificate kind"):
        client.request(endpoint(server), trust, token, cases["names no IP address"], "admin", timeout=10)


def test_policy_pure() -> None:
    assert policy.token_matches("abcdef.0123456789abcdef", "abcdef.0123456789abcdef")
    assert not policy.token_matches("abcdef.0123456789abcdeX", "abcdef.0123456789abcdef")
    assert not policy.token_matches("", "abcdef.0123456789abcdef")
    with pytest.raises(policy.Refused, match="no PEM certificate signing request"):
        policy.parse(b"junk")
    request = policy.Request("w", ("w",), ("10.5.0.3",))
    policy.check(request, KIND_OS, ["10.5.0.2"])
    with pytest.raises(policy.Refused, match=r"10\.5\.0\.2"):
        policy.check(policy.Request("w", ("w",), ("10.5.0.2",)), KIND_OS, ["10.5.0.2"])
    with pytest.raises(policy.Refused, match="no common name"):
        policy.check(policy.Request("", (), ("10.5.0.3",)), KIND_OS, [])


def test_workers_cannot_run_trustd(configs: tuple[MachineConfig, MachineConfig]) -> None:
    _, worker = configs
    with pytest.raises(TrustdError, match="control planes only"):
        Authorities.from_config(worker, [])


def test_a_config_without_endpoints_fails_with_a_sentence(
    configs: tuple[MachineConfig, MachineConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, worker = configs
    bare = worker.model_copy(update={"machine": worker.machine.model_copy(update={"trustd": None})})
    assert client.run(bare, "w", "10.5.0.3", [], root=tmp_path) == 1
    assert "no machine.trustd.endpoints" in capsys.readouterr().out


def test_names_for_skips_loopback_and_link_local() -> None:
    assert client.names_for("w", ["127.0.0.1", "fe80::1", "10.5.0.3", "::1", "10.5.0.3", "fd00::3"]) == (
        ["w"],
        ["10.5.0.3", "fd00::3"],
    )
    assert client.target_of("https://[fd00::2]:50001") == "[fd00::2]:50001"
    assert grpc  # the channel module is the real one
