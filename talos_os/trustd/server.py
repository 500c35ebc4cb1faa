"""The ``trustd`` service of control-plane nodes: signs joining nodes' CSRs on port 50001 over TLS.

Its server certificate is issued from the OS CA for this node's addresses, host name and
machine.certSANs (as osd's is), so a worker verifies it with the OS CA certificate in its config.
There is no client certificate: the joining node proves itself with machine.token. A wrong token
is refused (PERMISSION_DENIED) and logged with the peer's address; every certificate issued is
logged with its names, the peer and the time it took to issue.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import grpc
from cryptography import x509

from talos_os import pki
from talos_os.api.gen import trustd_pb2 as pb
from talos_os.api.gen import trustd_pb2_grpc as pb_grpc
from talos_os.config import ConfigError, MachineConfig, load
from talos_os.trustd import KIND_OS, PORT, policy

log = logging.getLogger("trustd")
DEFAULT_CONFIG = Path("/run/talos/config.yaml")


class TrustdError(Exception):
    """trustd cannot serve; one sentence for the service log."""


class ParsedCA(pki.CertKey):
    """A CA whose certificate and key are parsed once: loading an RSA key checks it, which costs
    seconds on a slow node, and trustd signs with the same CA for every request."""

    @functools.cached_property
    def cert(self) -> x509.Certificate:
        return pki.load_certificate(self.cert_pem)

    @functools.cached_property
    def key(self) -> pki.PrivateKey:
        return pki.load_private_key(self.key_pem)

    @classmethod
    def parsed(cls, crt: str, key: str) -> ParsedCA:
        ca = cls(pki.b64decode(crt, what="certificate"), pki.b64decode(key, what="private key"))
        ca.cert, ca.key  # noqa: B018 - parse now, at start, not on the first request
        return ca


@dataclass(frozen=True)
class Authorities:
    """The CAs trustd signs with, its token, and the addresses no joining node may claim."""

    token: str
    os_ca: pki.CertKey
    kubelet_ca: pki.CertKey | None
    reserved_ips: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: MachineConfig, own_addresses: list[str]) -> Authorities:
        if cfg.machine.ca.key is None:
            raise TrustdError(
                "trustd runs on control planes only: this config's machine.ca carries no key to sign with"
            )
        cluster_ca = cfg.cluster.ca
        host = urlsplit(str(cfg.cluster.control_plane.endpoint)).hostname or ""
        reserved = [a for a in [*own_addresses, host] if a and not a.startswith("127.") and a != "::1"]
        return cls(
            token=cfg.machine.token,
            os_ca=ParsedCA.parsed(cfg.machine.ca.crt, cfg.machine.ca.key),
            kubelet_ca=None if cluster_ca.key is None else ParsedCA.parsed(cluster_ca.crt, cluster_ca.key),
            reserved_ips=tuple(dict.fromkeys(reserved)),
        )


class TrustdServicer(pb_grpc.TrustdServicer):  # type: ignore[misc]
    """``talos.trustd.v1.Trustd``: token, then policy, then signature."""

    def __init__(self, authorities: Authorities) -> None:
        self.authorities = authorities

    def Certificate(
        self, request: pb.CertificateRequest, context: grpc.ServicerContext
    ) -> pb.CertificateReply:
        started = time.perf_counter()
        peer = context.peer()
        kind = request.kind or KIND_OS
        if not policy.token_matches(request.token, self.authorities.token):
            log.warning("refused a %s certificate request from %s: wrong token", kind, peer)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "trustd refused the request: the token is not this cluster's machine.token",
            )
        try:
            wanted = policy.parse(request.csr)
            policy.check(wanted, kind, self.authorities.reserved_ips)
            ca = self.authorities.os_ca if kind == KIND_OS else self.authorities.kubelet_ca
            if ca is None:
                raise policy.Refused("this control plane has no cluster CA key to sign kubelet certificates")
            cert = policy.sign(ca, request.csr)
        except policy.Refused as exc:
            log.warning("refused a %s certificate request from %s: %s", kind, peer, exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"trustd refused the request: {exc}")
        elapsed = (time.perf_counter() - started) * 1000
        log.info(
            "issued %s %s certificate for %s (%s) to %s in %.1f ms",
            "an" if kind == KIND_OS else "a",
            kind,
            wanted.common_name,
            ", ".join([*wanted.dns_names, *wanted.ip_addresses]),
            peer,
            elapsed,
        )
        assert ca is not None  # refused above otherwise
        return pb.CertificateReply(certificate=cert, ca=ca.cert_pem)


class Trustd:
    """The grpc server: TLS 1.3 with an OS-CA server certificate, no client certificates."""

    def __init__(
        self, authorities: Authorities, identity: pki.CertKey, *, address: str = "[::]", port: int = PORT
    ) -> None:
        self.authorities = authorities
        self.identity = identity
        self.address = address
        self.port = port
        self._server: grpc.Server | None = None

    def start(self) -> int:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="trustd"),
            options=[("grpc.so_reuseport", 0), ("grpc.server_handshake_timeout_ms", 10000)],
            maximum_concurrent_rpcs=32,
        )
        pb_grpc.add_TrustdServicer_to_server(TrustdServicer(self.authorities), server)
        creds = grpc.ssl_server_credentials([(self.identity.key_pem, self.identity.cert_pem)])
        bound = 0
        for host in (self.address, "0.0.0.0") if self.address == "[::]" else (self.address,):
            try:
                bound = int(server.add_secure_port(f"{host}:{self.port}", creds))
            except RuntimeError:
                bound = 0
            if bound:
                break
        if not bound:
            raise TrustdError(f"trustd cannot listen on {self.address} port {self.port}: it is in use")
        server.start()
        self._server = server
        self.port = bound
        return bound

    def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> Trustd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build(cfg: MachineConfig, addresses: list[str], hostname: str, *, address: str, port: int) -> Trustd:
    """trustd for this node: authorities from the config, a server certificate from the OS CA."""
    from talos_os.osd.auth import server_identity

    authorities = Authorities.from_config(cfg, addresses)
    identity, _source = server_identity(cfg, addresses, hostname)
    return Trustd(authorities, identity, address=address, port=port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m talos_os.trustd.server", description="Sign joining nodes' CSRs."
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--address", default="[::]")
    p.add_argument("--port", type=int, default=PORT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="trustd: %(levelname)s %(message)s", stream=sys.stderr)
    from talos_os.lib import netinfo

    try:
        cfg = load(args.config)
        network = cfg.machine.network
        hostname = (network.hostname if network is not None else None) or socket.gethostname()
        server = build(cfg, netinfo.addresses(), hostname, address=args.address, port=args.port)
        server.start()
    except ConfigError as exc:
        print(f"trustd: the machine config {args.config} is not usable: {exc}", file=sys.stderr)
        return 1
    except (OSError, TrustdError, pki.PKIError) as exc:
        print(f"trustd: {exc}", file=sys.stderr)
        return 1
    print(f"trustd: serving on port {server.port} (TLS, OS CA certificate)", file=sys.stderr, flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping.wait(3600):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
