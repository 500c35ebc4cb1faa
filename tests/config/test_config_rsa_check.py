"""RSA keys in a config are checked by their arithmetic, not OpenSSL's primality tests (seconds per
config under emulation): an inconsistent key is still refused at its path."""

from __future__ import annotations

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from talos_os import pki
from talos_os.config import ConfigError, generate, loads


def _inconsistent_key_pem() -> bytes:
    good = rsa.generate_private_key(65537, 2048).private_numbers()
    bad = rsa.RSAPrivateNumbers(
        good.p, good.q, good.d, good.dmp1 ^ 2, good.dmq1, good.iqmp, good.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    return bad.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_an_inconsistent_rsa_key_is_refused_at_its_path() -> None:
    doc = yaml.safe_load(generate.generate("rsa", "https://10.5.0.2:6443").controlplane)
    doc["cluster"]["serviceAccount"]["key"] = pki.b64encode(_inconsistent_key_pem())
    try:
        loads(yaml.safe_dump(doc))
    except ConfigError as exc:
        assert "cluster.serviceAccount.key" in str(exc) and "does not parse as a private key" in str(exc)
    else:
        raise AssertionError("an RSA key whose CRT values are wrong was accepted")


def test_generated_rsa_keys_pass() -> None:
    cfg = loads(generate.generate("rsa2", "https://10.5.0.2:6443").controlplane)
    assert cfg.cluster.ca.private_key() is not None
