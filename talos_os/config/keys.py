"""Certificates and private keys of the machine config: strict base64, cached parsing, RSA sanity.

Kept apart from the field validators (``types``) so code that only reads key material (the model's
accessors, the PKI) does not need them.
"""

import base64
import binascii
import functools

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key


def decode_b64(text: str) -> bytes:
    """Decode base64 strictly, ignoring line breaks; raise ValueError when it is not base64."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc


# Parsing is cached: RSA keys take tens of milliseconds to check, and validation, the cross-field checks
# and the accessors would otherwise parse the same key several times.
@functools.lru_cache(maxsize=32)
def parse_certificate_pem(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


@functools.lru_cache(maxsize=32)
def parse_private_key_pem(pem: bytes) -> PrivateKeyTypes:
    # OpenSSL's RSA key check tests p and q for primality: ~100 ms per 2048-bit key on a host and
    # seconds per config under software emulation, where it was most of the init's config phase.
    # The relations CRT signing relies on are checked instead (a key that breaks them would sign
    # wrongly); the primes are the operator's own, made by `osctl config generate` or their PKI.
    key = load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    if isinstance(key, rsa.RSAPrivateKey):
        _check_rsa(key.private_numbers())
    return key


def _check_rsa(n: rsa.RSAPrivateNumbers) -> None:
    """Raise ValueError unless the private numbers are consistent (n = pq, e and d inverse, CRT values)."""
    p, q, d, e = n.p, n.q, n.d, n.public_numbers.e
    if not (
        p > 1
        and q > 1
        and p * q == n.public_numbers.n
        and (d * e) % (p - 1) == 1 % (p - 1)
        and (d * e) % (q - 1) == 1 % (q - 1)
        and n.dmp1 == d % (p - 1)
        and n.dmq1 == d % (q - 1)
        and (n.iqmp * q) % p == 1
    ):
        raise ValueError("the RSA private key is inconsistent (its numbers do not belong together)")


def load_certificate(b64: str) -> x509.Certificate:
    """Parse a base64-of-PEM certificate; raise ValueError when it is not one."""
    return parse_certificate_pem(decode_b64(b64))


def load_private_key(b64: str) -> PrivateKeyTypes:
    """Parse a base64-of-PEM unencrypted private key; raise ValueError/TypeError when it is not one."""
    return parse_private_key_pem(decode_b64(b64))
