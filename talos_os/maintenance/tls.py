"""The maintenance API's certificate: self-signed, made at each maintenance start, pinned by fingerprint.

The node cannot have a certificate clients already trust (it has no config, so no CA), so the
console prints the SHA-256 fingerprint of the DER certificate and ``osctl --cert-fingerprint``
refuses any other certificate.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = timedelta(days=1)
_HEX = re.compile(r"^[0-9a-f]{64}$")


def self_signed(name: str) -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key and a self-signed server certificate naming ``name``: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))  # a node's clock may lag before NTP
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER form, 64 lowercase hex digits."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def fingerprint_der(der: bytes) -> str:
    """SHA-256 of a DER certificate, as :func:`fingerprint` prints it."""
    return hashlib.sha256(der).hexdigest()


def normalize(value: str) -> str:
    """An operator's fingerprint (hex, any case, colons or spaces allowed) as 64 lowercase hex digits;
    ValueError with the expected form otherwise."""
    text = re.sub(r"[\s:]", "", value).lower()
    if not _HEX.match(text):
        raise ValueError(
            f"{value!r} is not a SHA-256 fingerprint: expected the 64 hex digits the node prints on its console"
        )
    return text
