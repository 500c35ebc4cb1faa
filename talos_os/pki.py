"""PKI for talos-os: certificate authorities, node and client certificates, CSRs and secret files.

Two trust domains exist. The OS CA (ECDSA P-256, so grpc can use TLS 1.3) signs the node API
server certificates and operator client certificates; a client's role travels in its subject O
(``os:admin``/``os:reader``). The Kubernetes CAs (RSA by default, as kubeadm expects) are generated
here but only handed over to kubeadm. Everything is PEM in memory; files holding keys are written
atomically and are never readable by anybody else, not even for a moment.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from talos_os.lib.atomic import write_with_mode

ROLE_ADMIN = "os:admin"
ROLE_READER = "os:reader"
ROLES = frozenset({ROLE_ADMIN, ROLE_READER})

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
# Certificates start this far in the past so a node whose clock lags a little still accepts them.
CLOCK_SKEW = timedelta(minutes=5)
RSA_KEY_SIZE = 2048

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
Usage = Literal["server", "client", "both"]
IPLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address


class PKIError(Exception):
    """A certificate, key or CSR is unusable; the message says which and why."""


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its PEM private key, as they travel in configs and files."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        """The parsed certificate."""
        return load_certificate(self.cert_pem)

    @property
    def key(self) -> PrivateKey:
        """The parsed private key."""
        return load_private_key(self.key_pem)

    def b64_crt(self) -> str:
        """The certificate as base64 of its PEM text (the machine-config encoding)."""
        return b64encode(self.cert_pem)

    def b64_key(self) -> str:
        """The key as base64 of its PEM text (the machine-config encoding)."""
        return b64encode(self.key_pem)

    @classmethod
    def from_b64(cls, crt: str, key: str) -> CertKey:
        """Build from the machine-config encoding, checking both halves parse."""
        pair = cls(b64decode(crt, what="certificate"), b64decode(key, what="private key"))
        pair.cert  # noqa: B018 - parse now so a bad value fails here, not at first use
        pair.key  # noqa: B018
        return pair


def b64encode(data: bytes) -> str:
    """Base64 (standard alphabet, one line) of ``data``."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, what: str = "value") -> bytes:
    """Decode base64, turning a malformed value into a ``PKIError`` that names ``what``."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise PKIError(f"the {what} is not valid base64: {exc}") from None


def load_certificate(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate or explain that it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate: {exc}") from None


def load_private_key(pem: bytes) -> PrivateKey:
    """Parse an unencrypted PEM private key of a type this PKI signs with."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise PKIError(f"unsupported private key type {type(key).__name__}")
    return key


def key_to_pem(key: PrivateKey) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM (what Go, kubeadm and OpenSSL all read)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """Serialise a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def new_ecdsa_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key: fast to make and accepted by every TLS 1.3 stack."""
    return ec.generate_private_key(ec.SECP256R1())


def new_rsa_key(bits: int = RSA_KEY_SIZE) -> rsa.RSAPrivateKey:
    """A fresh RSA key, for the Kubernetes side where RSA is the conventional choice."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    """Ed25519 signs without a separate digest; everything else uses SHA-256."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    """A subject/issuer name with O attributes first, then CN (the usual order)."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _now() -> datetime:
    return datetime.now(UTC)


def _new_ca(
    common_name: str,
    key: PrivateKey,
    *,
    organizations: Sequence[str],
    path_length: int | None,
    validity: timedelta,
) -> CertKey:
    """A self-signed CA certificate for ``key``."""
    now = _now()
    name = _name(common_name, organizations)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _hash_for(key))
    )
    return CertKey(cert_to_pem(cert), key_to_pem(key))


def new_os_ca(name: str, *, validity: timedelta = CA_VALIDITY) -> CertKey:
    """The OS API CA (ECDSA P-256). Path length 0: it only ever signs leaf certificates."""
    return _new_ca(name, new_ecdsa_key(), organizations=(name,), path_length=0, validity=validity)


def new_kubernetes_ca(
    name: str, *, algorithm: Literal["rsa", "ecdsa"] = "rsa", validity: timedelta = CA_VALIDITY
) -> CertKey:
    """A Kubernetes-side CA (cluster, front-proxy or etcd); RSA 2048 unless ECDSA is asked for."""
    key: PrivateKey = new_rsa_key() if algorithm == "rsa" else new_ecdsa_key()
    return _new_ca(name, key, organizations=(), path_length=None, validity=validity)


def new_service_account_key() -> bytes:
    """The key kube-apiserver signs service-account tokens with: RSA 2048, PKCS#8 PEM."""
    return key_to_pem(new_rsa_key())


def _parse_ips(ip_addresses: Iterable[IPLike]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Turn strings into IP objects, reporting the offending value on failure."""
    parsed = []
    for ip in ip_addresses:
        try:
            parsed.append(ipaddress.ip_address(ip))
        except ValueError:
            raise PKIError(f"{ip!r} is not an IP address") from None
    return parsed


def _san(dns_names: Iterable[str], ip_addresses: Iterable[IPLike]) -> x509.SubjectAlternativeName | None:
    """The SAN extension for these names, or None when there are none."""
    general: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    general += [x509.IPAddress(ip) for ip in _parse_ips(ip_addresses)]
    return x509.SubjectAlternativeName(general) if general else None


def _eku(usage: Usage) -> x509.ExtendedKeyUsage:
    oids = {
        "server": [ExtendedKeyUsageOID.SERVER_AUTH],
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    }
    if usage not in oids:
        raise PKIError(f"unknown certificate usage {usage!r}: choose server, client or both")
    return x509.ExtendedKeyUsage(oids[usage])


def _leaf_key_usage(public: object) -> x509.KeyUsage:
    """digitalSignature always; keyEncipherment too for RSA, whose TLS key exchange may need it."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _sign_leaf(
    ca: CertKey,
    subject: x509.Name,
    public: CertificatePublicKeyTypes,
    san: x509.SubjectAlternativeName | None,
    usage: Usage,
    validity: timedelta,
) -> x509.Certificate:
    """Sign a leaf certificate; it never outlives the CA that signs it."""
    ca_cert, ca_key = ca.cert, ca.key
    now = _now()
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public), critical=True)
        .add_extension(_eku(usage), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def issue_certificate(
    ca: CertKey,
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPLike] = (),
    usage: Usage = "server",
    validity: timedelta = LEAF_VALIDITY,
    key: PrivateKey | None = None,
) -> CertKey:
    """Issue a leaf certificate signed by ``ca``, generating an ECDSA P-256 key unless one is given."""
    key = key if key is not None else new_ecdsa_key()
    cert = _sign_leaf(
        ca,
        _name(common_name, organizations),
        key.public_key(),
        _san(dns_names, ip_addresses),
        usage,
        validity,
    )
    return CertKey(cert_to_pem(cert), key_to_pem(key))


def issue_client_certificate(
    ca: CertKey, name: str, role: str = ROLE_ADMIN, *, validity: timedelta = LEAF_VALIDITY
) -> CertKey:
    """An operator's client certificate: CN is who, O is the role the node API enforces."""
    if role not in ROLES:
        raise PKIError(f"unknown role {role!r}: choose one of {', '.join(sorted(ROLES))}")
    return issue_certificate(ca, name, organizations=(role,), usage="client", validity=validity)


def roles_of(cert: x509.Certificate) -> set[str]:
    """The roles a client certificate grants: its known subject O values (unknown ones grant nothing)."""
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return {str(attr.value) for attr in orgs} & ROLES


def new_csr(
    key: PrivateKey,
    common_name: str,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPLike] = (),
) -> bytes:
    """A PEM certificate signing request; nodes send these to trustd so their keys never travel."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name, organizations))
    san = _san(dns_names, ip_addresses)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(key, _hash_for(key)).public_bytes(serialization.Encoding.PEM)


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a CSR and check it is signed by the key it carries (proof of possession)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate signing request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature, x509.UnsupportedGeneralNameType) as exc:
        raise PKIError(f"the certificate signing request cannot be checked: {exc}") from None
    if not valid:
        raise PKIError("the certificate signing request's signature is invalid")
    return csr


def sign_csr(
    ca: CertKey,
    csr_pem: bytes,
    *,
    usage: Usage = "server",
    validity: timedelta = LEAF_VALIDITY,
    allowed_organizations: Iterable[str] | None = None,
) -> bytes:
    """Sign a verified CSR with ``ca``, keeping its subject and SANs; returns the PEM certificate.

    ``allowed_organizations`` stops a requester from granting itself a role: any O outside it is refused.
    """
    csr = _load_csr(csr_pem)
    orgs = {str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)}
    if allowed_organizations is not None:
        refused = orgs - set(allowed_organizations)
        if refused:
            raise PKIError(
                f"the request asks for organization(s) {', '.join(sorted(refused))}, which are not allowed"
            )
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise PKIError(f"unsupported public key type {type(public).__name__} in the request")
    return cert_to_pem(_sign_leaf(ca, csr.subject, public, san, usage, validity))


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Check ``cert`` is signed by ``ca_cert`` and currently valid; raise ``PKIError`` otherwise."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PKIError(
            f"certificate {cert.subject.rfc4514_string()} is not signed by this CA: {exc}"
        ) from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PKIError(
            f"certificate {cert.subject.rfc4514_string()} is not valid at {now:%Y-%m-%d %H:%M} UTC"
        )


def write_secret(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write key material with mode 0600 from the moment the file exists."""
    write_with_mode(path, data, 0o600)


def write_public(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write public material (certificates) with mode 0644."""
    write_with_mode(path, data, 0o644)
