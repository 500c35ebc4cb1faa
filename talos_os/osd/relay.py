"""One endpoint for every node: a control plane's osd relays a call to the node named in its metadata.

``osctl -e CP -n WORKER version`` connects to CP and sends ``nodes: WORKER`` in the call's metadata
(the key talosctl uses). CP authorizes the caller as for any call (its policy, its admission
limits), then calls the same method on WORKER's osd over mutual TLS with a client certificate it
mints from the OS CA for the caller's name and role: a reader stays a reader at the far end, which
checks the call again against its own policy. Requests and answers pass through as bytes; the far
end's status, message and trailing metadata come back unchanged.

A node named in the metadata that is this node itself is served here. Workers carry no OS CA key,
so they cannot relay: they say so in one sentence.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import grpc

from talos_os import pki
from talos_os.osd.auth import (
    SERVICE,
    AuthInterceptor,
    Caller,
    _method_name,
    abort,
    current_caller,
)

NODES_KEY = "nodes"  # the metadata key naming the target node (talosctl's)
DEFAULT_PORT = 50000
MINTED_VALIDITY = timedelta(hours=1)
MINTED_REUSE = 1800.0  # seconds a minted client certificate is reused
DEFAULT_TIMEOUT = 60.0


class RelayError(Exception):
    """The node named cannot be used as a relay target; one sentence."""


def split_target(value: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address -> (host, port)."""
    text = value.strip()
    if not text or len(text) > 255 or not text.isprintable():
        raise RelayError(f"{text[:64]!r} is not a node address")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise RelayError(f"{text!r} is not a node address (HOST, HOST:PORT or [IPv6]:PORT)")
    return host, int(port) if port else default_port


def requested_target(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The node the call's metadata names, None when it names none; several are refused."""
    values = [str(v) for k, v in (metadata or ()) if k == NODES_KEY]
    values = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not values:
        return None
    if len(set(values)) > 1:
        raise RelayError(
            f"the call names {len(values)} nodes ({', '.join(values[:4])}): relay one node per call"
        )
    return values[0]


def role_of(caller: Caller) -> str:
    """The one role the minted certificate carries: the strongest the caller has."""
    return pki.ROLE_ADMIN if caller.is_admin else pki.ROLE_READER


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Relay:
    """Forwards calls to other nodes' osd with client certificates minted for each caller's role."""

    def __init__(
        self,
        ca: pki.CertKey | None,
        ca_pem: bytes,
        own_names: Callable[[], Sequence[str]],
        *,
        port: int = DEFAULT_PORT,
        own_port: int | None = None,
    ) -> None:
        self.ca = ca
        self.ca_pem = ca_pem
        self.own_names = own_names
        self.port = port  # the far end's port when the target names none
        self.own_port = port if own_port is None else own_port  # this osd's
        self._minted: dict[tuple[str, str], tuple[float, pki.CertKey]] = {}
        self._lock = threading.Lock()

    def is_self(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is this osd (then the call is served here)."""
        names = {"localhost", "127.0.0.1", "::1", *self.own_names()}
        with contextlib.suppress(ValueError):
            host = str(ipaddress.ip_address(host))
        return host in names and port == self.own_port

    def mint(self, caller: Caller) -> pki.CertKey:
        """A short-lived client certificate for ``caller``'s name and role (reused for a while)."""
        if self.ca is None:
            raise RelayError(
                "this node cannot relay calls to other nodes: it is a worker, without the OS CA key that "
                "proves the caller's role to them; use a control-plane node as the endpoint (-e)"
            )
        key = (caller.name, role_of(caller))
        now = time.monotonic()
        with self._lock:
            found = self._minted.get(key)
            if found is None or now - found[0] > MINTED_REUSE:
                cert = pki.issue_client_certificate(self.ca, caller.name, key[1], validity=MINTED_VALIDITY)
                found = (now, cert)
                self._minted[key] = found
        return found[1]

    def channel(self, target: str, caller: Caller) -> grpc.Channel:
        host, port = split_target(target, self.port)
        minted = self.mint(caller)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=minted.key_pem, certificate_chain=minted.cert_pem
        )
        return grpc.secure_channel(_grpc_address(host, port), creds, options=[("grpc.enable_retries", 0)])


def _open(relay: Relay, target: str, context: grpc.ServicerContext) -> grpc.Channel:
    try:
        return relay.channel(target, current_caller())
    except (RelayError, pki.PKIError) as exc:
        abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))


def _fail(context: grpc.ServicerContext, target: str, err: grpc.RpcError) -> None:
    code = err.code() or grpc.StatusCode.UNKNOWN
    details = err.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:  # osctl names the node in front of every error already
        details = f"the control plane cannot reach osd on {target}: {details}"
    abort(context, code, details)


class RelayInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Placed before :class:`AuthInterceptor`: calls naming another node are authorized with the same
    policy and admission, then forwarded; everything else goes on to be served here."""

    def __init__(self, auth: AuthInterceptor, relay: Relay | None) -> None:
        self.auth = auth
        self.relay = relay  # None: this osd relays nothing and refuses calls naming another node

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        try:
            target = requested_target(details.invocation_metadata)
        except RelayError as exc:
            return _refusal(str(exc))
        if target is None:
            return continuation(details)
        if self.relay is None:
            return _refusal(
                f"this osd does not relay calls to other nodes ({target}): contact that node directly"
            )
        try:
            host, port = split_target(target, self.relay.port)
        except RelayError as exc:
            return _refusal(str(exc))
        if self.relay.is_self(host, port):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        service, method = _method_name(details.method)
        if service != SERVICE:
            method = details.method
        full = details.method
        parse = handler.request_deserializer
        relay, auth = self.relay, self.auth  # (relay is not None here)

        def unary(raw: bytes, context: grpc.ServicerContext) -> bytes:
            with (
                auth._call(parse(raw) if parse else raw, context, method),
                _open(relay, target, context) as ch,
            ):
                call = ch.unary_unary(full, request_serializer=None, response_deserializer=None)
                try:
                    response, info = call.with_call(raw, timeout=context.time_remaining() or DEFAULT_TIMEOUT)
                except grpc.RpcError as err:
                    _fail(context, target, err)
                    raise
                context.set_trailing_metadata(info.trailing_metadata() or ())
                return bytes(response)

        def stream(raw: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            with (
                auth._call(parse(raw) if parse else raw, context, method),
                _open(relay, target, context) as ch,
            ):
                call = ch.unary_stream(full, request_serializer=None, response_deserializer=None)
                remaining = context.time_remaining()
                responses = call(raw, timeout=remaining if remaining and remaining < 1e6 else None)
                context.add_callback(responses.cancel)  # the caller went away: end the far call
                try:
                    for chunk in responses:
                        yield bytes(chunk)
                except grpc.RpcError as err:
                    if context.is_active():
                        _fail(context, target, err)
                    return
                context.set_trailing_metadata(responses.trailing_metadata() or ())

        def upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            """A client stream (an upgrade bundle sent from the operator's disk) passes through as it comes."""
            with auth._call(None, context, method), _open(relay, target, context) as ch:
                call = ch.stream_unary(full, request_serializer=None, response_deserializer=None)
                remaining = context.time_remaining()
                try:
                    response, info = call.with_call(
                        (bytes(r) for r in requests),
                        timeout=remaining if remaining and remaining < 1e6 else None,
                    )
                except grpc.RpcError as err:
                    _fail(context, target, err)
                    raise
                context.set_trailing_metadata(info.trailing_metadata() or ())
                return bytes(response)

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(stream)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(upload)
        return _refusal(f"{method} cannot be relayed to another node")


def _refusal(message: str) -> grpc.RpcMethodHandler:
    def refuse(_request: bytes, context: grpc.ServicerContext) -> bytes:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, message)

    return grpc.unary_unary_rpc_method_handler(refuse)
