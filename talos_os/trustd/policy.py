"""What trustd agrees to sign: the token check and the limits on a request's names (pure code).

The token is compared in constant time. A request carries no roles (no subject O: a signed
certificate must never be an operator's client certificate) and may not name the control plane:
a joining node gets a certificate for itself, not one that could stand in for the API server or
for the control plane's osd.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from talos_os import pki
from talos_os.trustd import KINDS

# DNS names that belong to the API server's certificate, never to a joining node's.
RESERVED_NAMES = ("kubernetes", "kubernetes.default", "localhost")
RESERVED_SUFFIXES = (".svc", ".svc.cluster.local", "kubernetes.default.svc")


class Refused(Exception):
    """The request is refused; the message is one sentence for both sides' logs."""


@dataclass(frozen=True)
class Request:
    """What a CSR asks for."""

    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (hmac.compare_digest) of the presented and the cluster's token."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def parse(csr_pem: bytes) -> Request:
    """The CSR's subject and SANs; refuses unparsable requests and any with an organization (a role)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise Refused(f"the request holds no PEM certificate signing request: {exc}") from None
    if csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
        raise Refused("the request asks for an organization (a role): a node certificate carries none")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    dns = tuple(san.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return Request(common_name, dns, ips)


def check(request: Request, kind: str, reserved_ips: Iterable[str]) -> None:
    """Refuse a kind we do not sign, a request without names, or one naming the control plane."""
    if kind not in KINDS:
        raise Refused(f"unknown certificate kind {kind!r}: ask for one of {', '.join(KINDS)}")
    if not request.common_name:
        raise Refused("the request has no common name: name the node (its host name)")
    if not request.ip_addresses:
        raise Refused("the request names no IP address: a node certificate must name the node's addresses")
    loopback = [ip for ip in request.ip_addresses if ipaddress.ip_address(ip).is_loopback]
    if loopback:
        raise Refused(
            f"the request names {', '.join(loopback)}: a node certificate names no loopback address"
        )
    reserved = {str(ipaddress.ip_address(ip)) for ip in reserved_ips if _is_ip(ip)}
    taken = sorted(set(request.ip_addresses) & reserved)
    if taken:
        raise Refused(
            f"the request names {', '.join(taken)}, an address of the control plane, not of a joining node"
        )
    for name in (request.common_name, *request.dns_names):
        lowered = name.lower().rstrip(".")
        if lowered in RESERVED_NAMES or lowered.endswith(RESERVED_SUFFIXES) or lowered in reserved:
            raise Refused(f"the request names {name!r}, which belongs to the control plane")


def sign(ca: pki.CertKey, csr_pem: bytes) -> bytes:
    """A server certificate for the CSR (proof of possession checked, no organizations allowed)."""
    try:
        return pki.sign_csr(ca, csr_pem, usage="server", allowed_organizations=())
    except pki.PKIError as exc:
        raise Refused(str(exc)) from None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
