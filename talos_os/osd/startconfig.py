"""The few machine-config values osd needs to start, read without the config model.

The init validates the machine config before it writes ``/run/talos/config.yaml`` and starts osd,
so osd does not validate it again: importing pydantic and the model and validating took about
half of osd's start-up under software emulation. osd reads the OS CA, its identity, the
certificate SANs and the host name from the YAML; the full model is loaded only when a call needs
it (:func:`full_config`, for the admin kubeconfig). The classes mirror the model's attribute names,
so :func:`talos_os.osd.auth.server_identity` takes either.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from talos_os import pki

if TYPE_CHECKING:
    from cryptography import x509

    from talos_os.config import MachineConfig


class StartConfigError(ValueError):
    """The YAML lacks a value osd needs; the caller loads the full model, which says exactly what."""


@dataclass(frozen=True)
class CertAndKey:
    """``crt`` and ``key`` as the config holds them: base64 of PEM text."""

    crt: str
    key: str | None = None

    @property
    def crt_pem(self) -> bytes:
        return pki.b64decode(self.crt, what="certificate")

    def certificate(self) -> x509.Certificate:
        return pki.load_certificate(self.crt_pem)


@dataclass(frozen=True)
class KeyPair(CertAndKey):
    """A certificate whose key must be present (``machine.identity``)."""

    key: str = ""


@dataclass(frozen=True)
class Network:
    hostname: str | None = None


@dataclass(frozen=True)
class Machine:
    ca: CertAndKey
    identity: KeyPair | None = None
    cert_sans: list[str] = field(default_factory=list)
    network: Network | None = None


@dataclass(frozen=True)
class StartConfig:
    """What osd needs at start: ``machine.ca``, ``machine.identity``, ``machine.certSANs``, the host name."""

    machine: Machine


def _pair(value: object, where: str) -> CertAndKey:
    if not isinstance(value, Mapping) or not isinstance(value.get("crt"), str):
        raise StartConfigError(f"{where}.crt is missing")
    key = value.get("key")
    if key is not None and not isinstance(key, str):
        raise StartConfigError(f"{where}.key is not a string")
    return CertAndKey(value["crt"], key)


def _key_pair(value: object, where: str) -> KeyPair:
    pair = _pair(value, where)
    if not pair.key:
        raise StartConfigError(f"{where}.key is missing")
    return KeyPair(pair.crt, pair.key)


def parse(doc: Any) -> StartConfig:
    """The start values of a parsed machine-config document."""
    machine = doc.get("machine") if isinstance(doc, Mapping) else None
    if not isinstance(machine, Mapping):
        raise StartConfigError("machine is missing")
    identity = machine.get("identity")
    sans = machine.get("certSANs") or []
    network = machine.get("network")
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        raise StartConfigError("machine.certSANs is not a list of names")
    hostname = network.get("hostname") if isinstance(network, Mapping) else None
    return StartConfig(
        Machine(
            ca=_pair(machine.get("ca"), "machine.ca"),
            identity=None if identity is None else _key_pair(identity, "machine.identity"),
            cert_sans=list(sans),
            network=Network(hostname if isinstance(hostname, str) else None),
        )
    )


def read(path: Path) -> StartConfig:
    """Read ``path`` (YAML, as the init wrote it); raises OSError, yaml.YAMLError or StartConfigError."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return parse(yaml.load(path.read_bytes(), Loader=loader))


@functools.lru_cache(maxsize=4)
def full_config(path: Path) -> MachineConfig:
    """The validated model of ``path``, loaded once on first need (raises ConfigError)."""
    from talos_os.config import load

    return load(path)
