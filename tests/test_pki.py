"""PKI: CA shape, issued certificates, roles, CSRs and secret files, cross-checked with OpenSSL."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from talos_os import pki

T = TypeVar("T", bound=x509.ExtensionType)


@pytest.fixture(scope="module")
def os_ca() -> pki.CertKey:
    return pki.new_os_ca("demo")


@pytest.fixture(scope="module")
def k8s_ca() -> pki.CertKey:
    return pki.new_kubernetes_ca("kubernetes")


@pytest.fixture(scope="module")
def server(os_ca: pki.CertKey) -> pki.CertKey:
    return pki.issue_certificate(
        os_ca,
        "node-1",
        dns_names=["node-1.example.com"],
        ip_addresses=["10.5.0.2", "fd00::2"],
        usage="server",
    )


def _ext(cert: x509.Certificate, kind: type[T]) -> x509.Extension[T]:
    return cert.extensions.get_extension_for_class(kind)


def _openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return name


def _assert_recent(moment: datetime, expected: datetime, slack: timedelta = timedelta(minutes=1)) -> None:
    assert abs(moment - expected) < slack, (moment, expected)


# ---- CAs ---------------------------------------------------------------------------------------------------


def test_os_ca_is_a_p256_ca_valid_ten_years_and_backdated(os_ca: pki.CertKey) -> None:
    cert, now = os_ca.cert, datetime.now(UTC)
    assert isinstance(os_ca.key, ec.EllipticCurvePrivateKey)
    assert isinstance(os_ca.key.curve, ec.SECP256R1)
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert _ext(cert, x509.SubjectKeyIdentifier).value.digest
    _assert_recent(cert.not_valid_before_utc, now - pki.CLOCK_SKEW)
    _assert_recent(cert.not_valid_after_utc, now + timedelta(days=3650))
    assert cert.issuer == cert.subject


def test_kubernetes_ca_is_rsa_2048_by_default_and_ecdsa_on_request(k8s_ca: pki.CertKey) -> None:
    assert isinstance(k8s_ca.key, rsa.RSAPrivateKey) and k8s_ca.key.key_size == 2048
    assert _ext(k8s_ca.cert, x509.BasicConstraints).value.ca
    ecdsa = pki.new_kubernetes_ca("etcd-ca", algorithm="ecdsa")
    assert isinstance(ecdsa.key, ec.EllipticCurvePrivateKey)


def test_service_account_key_is_rsa_2048_pkcs8() -> None:
    pem = pki.new_service_account_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_ca_passes_openssl_self_check(os_ca: pki.CertKey, tmp_path: Path) -> None:
    ca = _write(tmp_path, "ca.pem", os_ca.cert_pem)
    result = _openssl("verify", "-CAfile", ca, ca, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# ---- issued certificates -----------------------------------------------------------------------------------


def test_server_certificate_carries_sans_eku_and_key_ids(os_ca: pki.CertKey, server: pki.CertKey) -> None:
    cert = server.cert
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-1.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.5.0.2", "fd00::2"]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment and not usage.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).value.ca
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == _ext(os_ca.cert, x509.SubjectKeyIdentifier).value.digest
    pki.verify_issued_by(cert, os_ca.cert)


def test_server_certificate_verifies_with_openssl_and_shows_sans(
    os_ca: pki.CertKey, server: pki.CertKey, tmp_path: Path
) -> None:
    ca = _write(tmp_path, "ca.pem", os_ca.cert_pem)
    crt = _write(tmp_path, "server.pem", server.cert_pem)
    verify = _openssl("verify", "-CAfile", ca, "-purpose", "sslserver", crt, cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "server.pem: OK" in verify.stdout
    text = _openssl("x509", "-noout", "-text", "-in", crt, cwd=tmp_path).stdout
    assert "DNS:node-1.example.com" in text
    assert "IP Address:10.5.0.2" in text
    assert "IP ADDRESS:FD00:0:0:0:0:0:0:2" in text.upper()
    assert "TLS Web Server Authentication" in text


def test_certificate_key_matches_openssl(server: pki.CertKey, tmp_path: Path) -> None:
    crt = _write(tmp_path, "c.pem", server.cert_pem)
    key = _write(tmp_path, "k.pem", server.key_pem)
    from_cert = _openssl("x509", "-noout", "-pubkey", "-in", crt, cwd=tmp_path).stdout
    from_key = _openssl("pkey", "-pubout", "-in", key, cwd=tmp_path).stdout
    assert from_cert and from_cert == from_key


def test_certificate_from_another_ca_is_refused(server: pki.CertKey, tmp_path: Path) -> None:
    other = pki.new_os_ca("other")
    with pytest.raises(pki.PKIError, match="not signed by this CA"):
        pki.verify_issued_by(server.cert, other.cert)
    ca = _write(tmp_path, "other.pem", other.cert_pem)
    crt = _write(tmp_path, "server.pem", server.cert_pem)
    assert _openssl("verify", "-CAfile", ca, crt, cwd=tmp_path).returncode != 0


def test_rsa_leaf_gets_key_encipherment_and_both_usages(k8s_ca: pki.CertKey, tmp_path: Path) -> None:
    leaf = pki.issue_certificate(
        k8s_ca, "kube-apiserver", dns_names=["kubernetes"], usage="both", key=pki.new_rsa_key()
    )
    usage = _ext(leaf.cert, x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    assert set(_ext(leaf.cert, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    ca = _write(tmp_path, "ca.pem", k8s_ca.cert_pem)
    crt = _write(tmp_path, "leaf.pem", leaf.cert_pem)
    assert _openssl("verify", "-CAfile", ca, crt, cwd=tmp_path).returncode == 0


def test_validity_periods(os_ca: pki.CertKey, server: pki.CertKey) -> None:
    now = datetime.now(UTC)
    _assert_recent(server.cert.not_valid_before_utc, now - pki.CLOCK_SKEW)
    _assert_recent(server.cert.not_valid_after_utc, now + timedelta(days=365))
    short = pki.issue_certificate(os_ca, "short", validity=timedelta(hours=1))
    _assert_recent(short.cert.not_valid_after_utc, now + timedelta(hours=1))


def test_leaf_never_outlives_its_ca() -> None:
    ca = pki.new_os_ca("brief", validity=timedelta(days=2))
    leaf = pki.issue_certificate(ca, "node", validity=timedelta(days=365))
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_bad_inputs_raise_pki_error(os_ca: pki.CertKey) -> None:
    with pytest.raises(pki.PKIError, match="not an IP address"):
        pki.issue_certificate(os_ca, "x", ip_addresses=["10.0.0.300"])
    with pytest.raises(pki.PKIError, match="unknown certificate usage"):
        pki.issue_certificate(os_ca, "x", usage="sideways")  # type: ignore[arg-type]


# ---- roles -------------------------------------------------------------------------------------------------


def test_admin_and_reader_client_certificates(os_ca: pki.CertKey, tmp_path: Path) -> None:
    admin = pki.issue_client_certificate(os_ca, "alice", pki.ROLE_ADMIN)
    reader = pki.issue_client_certificate(os_ca, "bob", pki.ROLE_READER)
    assert pki.roles_of(admin.cert) == {"os:admin"}
    assert pki.roles_of(reader.cert) == {"os:reader"}
    assert list(_ext(admin.cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = _write(tmp_path, "ca.pem", os_ca.cert_pem)
    crt = _write(tmp_path, "admin.pem", admin.cert_pem)
    result = _openssl("verify", "-CAfile", ca, "-purpose", "sslclient", crt, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_unknown_roles_grant_nothing(os_ca: pki.CertKey) -> None:
    cert = pki.issue_certificate(os_ca, "eve", organizations=["system:masters", "os:admin2"], usage="client")
    assert pki.roles_of(cert.cert) == set()
    with pytest.raises(pki.PKIError, match="unknown role"):
        pki.issue_client_certificate(os_ca, "eve", "root")


# ---- CSRs --------------------------------------------------------------------------------------------------


def test_csr_round_trip_keeps_subject_and_sans(os_ca: pki.CertKey) -> None:
    key = pki.new_ecdsa_key()
    csr = pki.new_csr(key, "node-2", dns_names=["node-2"], ip_addresses=["10.5.0.3"])
    cert = pki.load_certificate(pki.sign_csr(os_ca, csr, usage="server", validity=timedelta(days=30)))
    pki.verify_issued_by(cert, os_ca.cert)
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=node-2"
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-2"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.5.0.3"]
    _assert_recent(cert.not_valid_after_utc, datetime.now(UTC) + timedelta(days=30))


def test_csr_with_a_forbidden_organization_is_refused(os_ca: pki.CertKey) -> None:
    csr = pki.new_csr(pki.new_ecdsa_key(), "sneaky", organizations=[pki.ROLE_ADMIN])
    with pytest.raises(pki.PKIError, match=r"os:admin.*not allowed"):
        pki.sign_csr(os_ca, csr, usage="client", allowed_organizations=[pki.ROLE_READER])
    cert = pki.load_certificate(
        pki.sign_csr(os_ca, csr, usage="client", allowed_organizations=[pki.ROLE_ADMIN])
    )
    assert pki.roles_of(cert) == {pki.ROLE_ADMIN}


def test_csr_with_a_bad_signature_is_refused(os_ca: pki.CertKey) -> None:
    good = x509.load_pem_x509_csr(pki.new_csr(pki.new_ecdsa_key(), "node-3", dns_names=["node-3"]))
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    # Swap the requested name for another of the same length: the signature no longer matches.
    at = der.find(b"node-3")
    der[at : at + 6] = b"node-X"
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.PKIError, match="signature is invalid"):
        pki.sign_csr(os_ca, tampered)


def test_garbage_csr_is_refused(os_ca: pki.CertKey) -> None:
    with pytest.raises(pki.PKIError, match="not a PEM certificate signing request"):
        pki.sign_csr(os_ca, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")


# ---- encodings ---------------------------------------------------------------------------------------------


def test_b64_round_trip(server: pki.CertKey) -> None:
    again = pki.CertKey.from_b64(server.b64_crt(), server.b64_key())
    assert again == server


def test_from_b64_rejects_bad_values(server: pki.CertKey) -> None:
    with pytest.raises(pki.PKIError, match="certificate is not valid base64"):
        pki.CertKey.from_b64("not base64!", server.b64_key())
    with pytest.raises(pki.PKIError, match="not a PEM certificate"):
        pki.CertKey.from_b64(pki.b64encode(b"hello"), server.b64_key())
    with pytest.raises(pki.PKIError, match="not an unencrypted PEM private key"):
        pki.CertKey.from_b64(server.b64_crt(), pki.b64encode(b"hello"))


# ---- files -------------------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_secret_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pki.write_secret(tmp_path / "key.pem", b"secret")
    finally:
        os.umask(old)
    assert (tmp_path / "key.pem").read_bytes() == b"secret"
    assert _mode(tmp_path / "key.pem") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_write_secret_replaces_a_world_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    target.chmod(0o644)
    pki.write_secret(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o600


def test_write_secret_is_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the data is being written (at fsync), the temp file is already 0600."""
    seen: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            seen.append(stat.S_IMODE(mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    pki.write_secret(tmp_path / "key.pem", b"secret")
    assert seen == [0o600]


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        pki.write_secret(tmp_path / "key.pem", b"secret")
    assert list(tmp_path.iterdir()) == []


def test_write_public_is_0644(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        pki.write_public(tmp_path / "ca.pem", b"cert")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ca.pem") == 0o644
