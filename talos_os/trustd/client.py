"""The ``identity`` one-shot of worker nodes: get osd's and the kubelet's certificates from trustd.

For each kind (``os``: osd's server certificate from the OS CA; ``kubelet``: the kubelet's serving
certificate from the cluster CA) the node keeps a key on /var, made here and never sent anywhere.
A certificate already on disk that the right CA issued, that belongs to the key, names this
node's host name and address and is not about to expire is kept: a worker that reboots while the
control plane is down still has its identity. Otherwise a CSR goes to each trustd endpoint in turn
over TLS (trustd verified against the CA certificates of the config) with machine.token, retried
with capped exponential backoff until one answers; every refusal is one log line.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from cryptography import x509

from talos_os import pki
from talos_os.api.gen import trustd_pb2 as pb
from talos_os.api.gen import trustd_pb2_grpc as pb_grpc
from talos_os.config import ConfigError, MachineConfig, load
from talos_os.trustd import KIND_KUBELET, KIND_OS, KUBELET_CERT, KUBELET_KEY, OSD_CERT, OSD_KEY

DEFAULT_CONFIG = Path("/run/talos/config.yaml")
RENEW_BEFORE = timedelta(days=30)
BACKOFF_START = 2.0
BACKOFF_CAP = 60.0
CALL_TIMEOUT = 30.0


def say(message: str) -> None:
    print(f"[identity] {message}", flush=True)


class RequestError(Exception):
    """One attempt failed; the message says which endpoint and why."""


@dataclass(frozen=True)
class Wanted:
    """One certificate this node needs: which kind, where it lives, which CA must have signed it."""

    kind: str
    cert_path: Path
    key_path: Path
    ca_pem: bytes


def wanted(cfg: MachineConfig, root: Path = Path("/")) -> list[Wanted]:
    """osd's certificate (OS CA), then the kubelet's (cluster CA)."""

    def at(path: Path) -> Path:
        return root / str(path).lstrip("/")

    return [
        Wanted(KIND_OS, at(OSD_CERT), at(OSD_KEY), cfg.machine.ca.crt_pem),
        Wanted(KIND_KUBELET, at(KUBELET_CERT), at(KUBELET_KEY), cfg.cluster.ca.crt_pem),
    ]


def names_for(hostname: str, addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a node certificate carries: the host name, the node's own addresses."""
    ips: list[str] = []
    for value in addresses:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local) and str(ip) not in ips:
            ips.append(str(ip))
    return [hostname], ips


def usable(want: Wanted, hostname: str, address: str, now: datetime | None = None) -> str | None:
    """None when the certificate on disk can be kept; else why not (for the log)."""
    if not want.cert_path.exists() or not want.key_path.exists():
        return "none on disk yet"
    try:
        cert = pki.load_certificate(want.cert_path.read_bytes())
        key = pki.load_private_key(want.key_path.read_bytes())
        pki.verify_issued_by(cert, pki.load_certificate(want.ca_pem))
    except (OSError, pki.PKIError) as exc:
        return f"the one on disk is unusable ({exc})"
    if _spki(key.public_key()) != _spki(cert.public_key()):
        return "the certificate on disk is not for the key on disk"
    now = now or datetime.now(UTC)
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it names nothing"
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    if hostname not in san.get_values_for_type(x509.DNSName) or (address and address not in ips):
        return f"it does not name {hostname} and {address}"
    return None


def _spki(key: object) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined, no-any-return]


def node_key(path: Path) -> pki.PrivateKey:
    """This node's key for one kind: the one on disk, else a new ECDSA P-256 key written 0600."""
    if path.exists():
        try:
            return pki.load_private_key(path.read_bytes())
        except pki.PKIError:
            say(f"{path} holds no usable key: making a new one")
    key = pki.new_ecdsa_key()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_secret(path, pki.key_to_pem(key))
    return key


def target_of(endpoint: str) -> str:
    """``https://HOST:PORT`` -> grpc's ``HOST:PORT`` (IPv6 in brackets)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or 50001
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def request(
    endpoint: str, trust_pem: bytes, token: str, csr: bytes, kind: str, timeout: float = CALL_TIMEOUT
) -> bytes:
    """One CSR to one trustd; the PEM certificate, or RequestError saying why not."""
    creds = grpc.ssl_channel_credentials(root_certificates=trust_pem)
    with grpc.secure_channel(target_of(endpoint), creds, options=[("grpc.enable_retries", 0)]) as channel:
        stub = pb_grpc.TrustdStub(channel)
        try:
            reply = stub.Certificate(pb.CertificateRequest(token=token, csr=csr, kind=kind), timeout=timeout)
        except grpc.RpcError as err:
            raise RequestError(f"trustd at {endpoint}: {err.details() or err.code().name}") from None
    return bytes(reply.certificate)


def obtain(
    want: Wanted,
    *,
    endpoints: Sequence[str],
    trust_pem: bytes,
    token: str,
    hostname: str,
    addresses: Sequence[str],
    send: Callable[[str, bytes, str, bytes, str], bytes] = request,
    sleep: Callable[[float], None] = time.sleep,
    attempts: int | None = None,
) -> float:
    """Ask trustd until a certificate for ``want`` comes back and checks out; seconds it took."""
    key = node_key(want.key_path)
    dns, ips = names_for(hostname, addresses)
    csr = pki.new_csr(key, hostname, dns_names=dns, ip_addresses=ips)
    delay, attempt, started = BACKOFF_START, 0, time.monotonic()
    while True:
        endpoint = endpoints[attempt % len(endpoints)]
        attempt += 1
        try:
            pem = send(endpoint, trust_pem, token, csr, want.kind)
            cert = pki.load_certificate(pem)
            pki.verify_issued_by(cert, pki.load_certificate(want.ca_pem))
            if _spki(cert.public_key()) != _spki(key.public_key()):
                raise RequestError(f"trustd at {endpoint} returned a certificate for another key")
        except (RequestError, pki.PKIError) as exc:
            if attempts is not None and attempt >= attempts:
                raise RequestError(str(exc)) from None
            say(f"{want.kind} certificate: {exc}; retry {attempt} in {delay:.0f} s")
            sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)
            continue
        want.cert_path.parent.mkdir(parents=True, exist_ok=True)
        pki.write_public(want.cert_path, pem)
        elapsed = time.monotonic() - started
        say(
            f"{want.kind} certificate for {hostname} ({', '.join([*dns, *ips])}) from {endpoint} "
            f"in {elapsed * 1000:.0f} ms, attempt {attempt}"
        )
        return elapsed


def run(
    cfg: MachineConfig, hostname: str, address: str, addresses: Sequence[str], root: Path = Path("/")
) -> int:
    """Every certificate the node needs, kept or obtained; exit status for the supervisor."""
    endpoints = [str(e) for e in (cfg.machine.trustd.endpoints if cfg.machine.trustd else [])]
    if not endpoints:
        say("the machine config has no machine.trustd.endpoints: add the control planes' trustd URLs")
        return 1
    if address and address not in addresses:
        addresses = [address, *addresses]
    # trustd's own certificate comes from the OS CA; osd's CA is the one to trust it with.
    trust = cfg.machine.ca.crt_pem
    for want in wanted(cfg, root):
        why = usable(want, hostname, address)
        if why is None:
            say(f"{want.kind} certificate: keeping {want.cert_path}")
            continue
        say(f"{want.kind} certificate: asking trustd ({why})")
        obtain(
            want,
            endpoints=endpoints,
            trust_pem=trust,
            token=cfg.machine.token,
            hostname=hostname,
            addresses=addresses,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m talos_os.trustd.client", description="Get this node's certificates from trustd."
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--hostname", default="")
    p.add_argument("--address", default="")
    args = p.parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        say(f"the machine config {args.config} is not usable: {exc}")
        return 1
    from talos_os.lib import netinfo

    try:
        addresses = netinfo.addresses(include_loopback=False)
    except OSError as exc:
        say(f"cannot list the node's addresses ({exc}): the certificates name {args.address} only")
        addresses = []
    return run(cfg, args.hostname or socket.gethostname(), args.address, addresses)


if __name__ == "__main__":
    sys.exit(main())
