"""osctl's side of the node API: targets, the mutual-TLS channel, parallel calls, readable errors.

Which nodes a command goes to: ``-n/--nodes`` (else the context's nodes); with none, the first
endpoint (``-e/--endpoints``, else the context's). As with talosctl, a node that is not one of the
endpoints is reached through the first endpoint: the call carries ``nodes: NODE`` in its metadata
and the endpoint's osd (a control plane's) relays it to NODE with the caller's role
(:mod:`talos_os.osd.relay`). A node that is an endpoint (``HOST[:PORT]``, port 50000 by default; a
bare host equal to an endpoint's uses that endpoint's port) is contacted as itself, and without any
endpoint the nodes are contacted directly.

The server certificate is verified against the context's CA and must name the address used
(an IP address is matched against the certificate's IP SANs). Our client certificate is checked
locally first, so an expired or foreign certificate is reported precisely: when a node refuses a
certificate it hangs up during the TLS handshake, and the client only sees the socket close.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

import grpc
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from talos_os import pki, talosconfig
from talos_os.api.gen import node_pb2_grpc as pb_grpc

DEFAULT_PORT = 50000
CALL_TIMEOUT = 30.0
RELAY_METADATA = "nodes"  # the node an endpoint relays a call to (as talosctl sends it)

T = TypeVar("T")


class NodeError(Exception):
    """A call to one node failed; the message is one sentence for the operator."""


@dataclass(frozen=True)
class Target:
    """One node to talk to: ``name`` as the operator wrote it, and where to connect."""

    name: str
    host: str
    port: int = DEFAULT_PORT
    relay: str = ""  # the node the endpoint at host:port relays the call to (metadata ``nodes``)

    @property
    def address(self) -> str:
        """``host:port`` for grpc (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def parse_target(value: str, default_port: int = DEFAULT_PORT) -> Target:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT``, or a bare IPv6 address; anything else is refused.

    HOST is an IP address or a DNS name; a bracket must close, and only an IPv6 address goes in one.
    """
    text = value.strip()
    if not text:
        raise talosconfig.TalosConfigError("an empty node or endpoint was given")
    expected = "expected HOST, HOST:PORT, [IPv6] or [IPv6]:PORT"
    port = ""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed:
            raise talosconfig.TalosConfigError(f"{value!r} opens a '[' it does not close: {expected}")
        if rest and not rest.startswith(":"):
            raise talosconfig.TalosConfigError(f"{value!r} has {rest!r} after ']': {expected}")
        port = rest[1:]
        if rest and not port:
            raise talosconfig.TalosConfigError(f"{value!r} has no port after ':': {expected}")
        if not _is_ip(host, 6):
            raise talosconfig.TalosConfigError(f"{value!r} holds no IPv6 address in brackets: {expected}")
    elif text.count(":") == 1:
        host, port = text.split(":")
        if not port:
            raise talosconfig.TalosConfigError(f"{value!r} has no port after ':': {expected}")
    elif ":" in text:
        host = text  # a bare IPv6 address (its port, if any, needs brackets)
        if not _is_ip(host, 6):
            raise talosconfig.TalosConfigError(f"{value!r} is not an IPv6 address: {expected}")
    else:
        host = text
    if not host or not (_is_ip(host, 0) or _HOSTNAME.fullmatch(host)):
        raise talosconfig.TalosConfigError(f"{value!r} names no valid host: {expected}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise talosconfig.TalosConfigError(f"{value!r} has an invalid port (1-65535): {expected}")
    name = host if not port else text
    return Target(name=name, host=host, port=int(port) if port else default_port)


def _is_ip(text: str, version: int) -> bool:
    """Whether ``text`` is an IP address (of ``version`` 4 or 6; 0 for either)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version in (0, address.version)


def resolve_targets(endpoints: Sequence[str], nodes: Sequence[str]) -> list[Target]:
    """The targets of a command (see the module docstring)."""
    parsed_endpoints = [parse_target(e) for e in endpoints]
    if not nodes:
        if not parsed_endpoints:
            raise talosconfig.TalosConfigError(
                "no node to talk to: the context has no endpoints; pass -e HOST or run `osctl config endpoint HOST`"
            )
        return parsed_endpoints[:1]
    ports = {e.host: e.port for e in parsed_endpoints}
    result: list[Target] = []
    for n in nodes:
        target = parse_target(n)
        if target.port == DEFAULT_PORT and ":" not in n.replace("::", "") and target.host in ports:
            target = Target(target.name, target.host, ports[target.host])
        if target not in result:
            result.append(target)
    return result


def relay_targets(endpoints: Sequence[str], nodes: Sequence[str]) -> list[Target]:
    """Targets for ``-e ENDPOINT -n NODE``: each node reached through the first endpoint, whose osd
    relays the call (a node that is one of the endpoints is contacted as itself)."""
    parsed = [parse_target(e) for e in endpoints]
    if not parsed:
        raise talosconfig.TalosConfigError("no endpoint to relay through: pass -e HOST")
    through = parsed[0]
    result: list[Target] = []
    for n in nodes:
        node = parse_target(n)
        same = next(
            (
                e
                for e in parsed
                if e.host == node.host and (":" not in n.replace("::", "") or e.port == node.port)
            ),
            None,
        )
        if same is not None:
            target = Target(node.name, same.host, same.port)
        else:
            target = Target(node.name, through.host, through.port, relay=node.name)
        if target not in result:
            result.append(target)
    return result


class _NodesMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``nodes: NODE`` to every call of every kind (an upgrade bundle's upload is a client
    stream), which the endpoint's osd relays to NODE."""

    def __init__(self, node: str) -> None:
        self.node = node

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), (RELAY_METADATA, self.node)]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self, continuation: Any, details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(
        self, continuation: Any, details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


@dataclass(frozen=True)
class Credentials:
    """The context's CA (to verify nodes) and our client certificate and key (PEM)."""

    ca: bytes
    crt: bytes
    key: bytes

    @classmethod
    def from_context(cls, ctx: talosconfig.Context) -> Credentials:
        return cls(ca=ctx.ca_pem(), crt=ctx.crt_pem(), key=ctx.key_pem())

    def check(self, now: datetime | None = None) -> None:
        """Refuse, with the reason, a client certificate that no node of this CA would accept."""
        cert = pki.load_certificate(self.crt)
        ca = pki.load_certificate(self.ca)
        who = cert.subject.rfc4514_string()
        now = now or datetime.now(UTC)
        if cert.not_valid_after_utc < now:
            raise talosconfig.TalosConfigError(
                f"the talosconfig's client certificate {who} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                "issue a new one (`osctl config generate` makes a fresh talosconfig)"
            )
        if cert.not_valid_before_utc > now:
            raise talosconfig.TalosConfigError(
                f"the talosconfig's client certificate {who} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this machine's clock"
            )
        try:
            key = pki.load_private_key(self.key)
        except pki.PKIError:
            raise talosconfig.TalosConfigError(
                "the talosconfig's client key is not a usable private key; the context's key must be "
                "the PEM key of its crt"
            ) from None
        if _public(key.public_key()) != _public(cert.public_key()):
            raise talosconfig.TalosConfigError(
                f"the talosconfig's client key does not belong to its certificate {who} (crt and key come "
                "from different pairs); put the matching key in the context, or make a fresh talosconfig"
            )
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:
            raise talosconfig.TalosConfigError(
                f"the talosconfig's client certificate {who} is not signed by the context's CA "
                f"{ca.subject.rfc4514_string()}, so no node of that cluster accepts it; use the matching context"
            ) from None
        if not pki.roles_of(cert):
            raise talosconfig.TalosConfigError(
                f"the talosconfig's client certificate {who} carries no role (its Organization must be "
                f"{pki.ROLE_ADMIN} or {pki.ROLE_READER})"
            )


def _public(key: object) -> bytes:
    """A public key's canonical bytes, so a certificate's key and a private key's can be compared."""
    return cast(Any, key).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def channel(target: Target, creds: Credentials) -> grpc.Channel:
    """A mutual-TLS channel to one node (TLS 1.3 is what the node accepts). A node reached through
    an endpoint gets ``nodes: NODE`` on every call here, so no command can forget it: without it the
    endpoint serves the call itself (an upgrade meant for a worker installed on the control plane)."""
    ch = grpc.secure_channel(
        target.address,
        grpc.ssl_channel_credentials(
            root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.crt
        ),
        options=[("grpc.enable_retries", 0)],
    )
    return grpc.intercept_channel(ch, _NodesMetadata(target.relay)) if target.relay else ch


def stub(ch: grpc.Channel) -> pb_grpc.NodeStub:
    return pb_grpc.NodeStub(ch)


def explain(err: grpc.RpcError, target: Target) -> str:
    """One sentence for a failed call (the node's own message when it sent one)."""
    code = err.code()
    details = err.details() or ""
    lowered = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        if target.relay and details.startswith("the control plane cannot reach"):
            return details  # the endpoint answered; the node behind it did not (osd.relay's sentence)
        if "connection refused" in lowered:
            return (
                f"cannot reach the node API at {target.address}: connection refused (is osd running there?)"
            )
        if (
            "wrong_version_number" in lowered
            or "http_request" in lowered
            or "packet_length_too_long" in lowered
        ):
            return (
                f"the service at {target.address} does not speak TLS (a plain-text service, such as HTTP, "
                "answered): check the port; osd listens on 50000"
            )
        if "connection reset" in lowered:
            return (
                f"the connection to {target.address} was reset before the node API answered (a firewall, a "
                "proxy, or a service other than osd on that port)"
            )
        if "certificate_verify_failed" in lowered or "tls handshake failed" in lowered:
            return (
                f"the node at {target.address} presented a certificate the talosconfig's CA does not trust "
                "(another cluster's node, or a wrong context)"
            )
        if "hostname verification" in lowered or "not in peer certificate" in lowered:
            return f"the node's certificate does not name {target.host}: connect to one of its addresses"
        if "socket closed" in lowered:
            return (
                f"the node at {target.address} refused our client certificate during the TLS handshake "
                "(it must be signed by the node's OS CA and unexpired; `osctl logs osd` on the node says why)"
            )
        if "dns" in lowered or "resolve" in lowered:
            return f"cannot resolve {target.host}"
        if "timeout" in lowered or "timed out" in lowered:
            return f"cannot reach the node API at {target.address}: connection timed out"
        if "osd cannot" in lowered:
            return details
        return f"cannot reach the node API at {target.address}: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {target.address} in time"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"not authenticated: {details}"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"permission denied: {details}"
    if code == grpc.StatusCode.CANCELLED:
        return "cancelled"
    if code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        return details
    return f"{code.name.lower().replace('_', ' ')}: {details}"


@dataclass
class Outcome(Generic[T]):
    """What one node answered, or why it did not."""

    target: Target
    value: T | None = None
    error: str | None = None


class Calls:
    """Runs a function against several nodes in parallel, one channel each; cancellable as a whole."""

    def __init__(self, targets: Sequence[Target], creds: Credentials) -> None:
        self.targets = list(targets)
        self.creds = creds
        self._lock = threading.Lock()
        self._channels: list[grpc.Channel] = []
        self._cancelled = False

    @property
    def many(self) -> bool:
        return len(self.targets) > 1

    def run(self, fn: Callable[[pb_grpc.NodeStub, Target], T]) -> list[Outcome[T]]:
        """``fn(stub, target)`` on every target; results in target order, errors as sentences."""
        if len(self.targets) == 1:
            return [self._one(fn, self.targets[0])]
        with ThreadPoolExecutor(max_workers=min(16, len(self.targets))) as pool:
            futures = [pool.submit(self._one, fn, t) for t in self.targets]
            try:
                return [f.result() for f in futures]
            except KeyboardInterrupt:
                self.cancel()
                raise

    def _one(self, fn: Callable[[pb_grpc.NodeStub, Target], T], target: Target) -> Outcome[T]:
        ch = channel(target, self.creds)
        with self._lock:
            self._channels.append(ch)
        try:
            return Outcome(target, value=fn(stub(ch), target))
        except grpc.RpcError as err:
            if self._cancelled:
                return Outcome(target, error="cancelled")
            return Outcome(target, error=explain(err, target))
        except NodeError as err:
            return Outcome(target, error=str(err))
        finally:
            ch.close()

    def cancel(self) -> None:
        """Close every channel (ending streams that follow forever)."""
        with self._lock:
            self._cancelled = True
            channels = list(self._channels)
        for ch in channels:
            ch.close()
