"""Who may call what: the node's TLS identity, mutual TLS 1.3, and roles from client certificates.

The TLS layer (BoringSSL inside grpc) refuses a client without a certificate, or with one that
does not chain to the OS CA (machine.ca) or has expired: those never reach a method, and the
client sees the handshake alert. Every call that gets through is checked again here (chain,
validity, then role) before the method runs, by :class:`AuthInterceptor`: methods not listed in
:data:`POLICY` are refused, so a new method cannot be forgotten open.

TLS 1.3 only: grpc's Python API has no minimum-version setting, so :mod:`talos_os.api` disables
every TLS 1.2 cipher before grpc loads, and :func:`accepts_tls12` lets osd prove at start-up that a
TLS 1.2 client hello is refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from talos_os import pki, trustd
from talos_os.osd.limits import Admission, Refused

if TYPE_CHECKING:
    from talos_os.config import MachineConfig
    from talos_os.osd.startconfig import StartConfig

log = logging.getLogger(__name__)

SERVICE = "talos.os.v1.Node"
_SHOWN = 200  # characters of an unexpected error's text passed on
ADMIN = frozenset({pki.ROLE_ADMIN})
ANYONE = frozenset({pki.ROLE_ADMIN, pki.ROLE_READER})

# Method -> the roles that may call it. Read additionally refuses secrets to readers (osd.server).
POLICY: dict[str, frozenset[str]] = {
    "Version": ANYONE,
    "Reboot": ADMIN,
    "Shutdown": ADMIN,
    "Reset": ADMIN,
    "ServiceList": ANYONE,
    "ServiceStart": ADMIN,
    "ServiceStop": ADMIN,
    "ServiceRestart": ADMIN,
    "Stats": ANYONE,
    "Processes": ANYONE,
    "Logs": ANYONE,
    "Containers": ANYONE,
    "Dmesg": ANYONE,
    "Kubeconfig": ADMIN,
    "Routes": ANYONE,
    "Interfaces": ANYONE,
    "Mounts": ANYONE,
    "Memory": ANYONE,
    "CopyOut": ADMIN,
    "Read": ANYONE,
    # talos.os.v1.Upgrade (talos_os/osd/upgrade.py): another service's methods go by their full name
    "/talos.os.v1.Upgrade/Upload": ADMIN,
    "/talos.os.v1.Upgrade/Install": ADMIN,
    "/talos.os.v1.Upgrade/Rollback": ADMIN,
    "/talos.os.v1.Upgrade/Slots": ANYONE,
    # talos.os.v1.Machine (talos_os/osd/machine.py)
    "/talos.os.v1.Machine/ApplyConfiguration": ADMIN,
    "/talos.os.v1.Machine/Disks": ANYONE,
}


class IdentityError(Exception):
    """osd has no usable server identity; the message says what the config lacks."""


def server_identity(
    config: MachineConfig | StartConfig,
    addresses: Sequence[str],
    hostname: str,
    issued: tuple[Path, Path] = (trustd.OSD_CERT, trustd.OSD_KEY),
) -> tuple[pki.CertKey, str]:
    """The certificate osd presents, and where it came from.

    machine.identity when the config has one; else a fresh certificate from machine.ca (when the
    config carries its key) naming ``addresses``, ``hostname`` and machine.certSANs; else (a worker)
    the certificate trustd issued, at ``issued`` (certificate, key).
    """
    machine = config.machine
    if machine.identity is not None:
        return pki.CertKey.from_b64(machine.identity.crt, machine.identity.key), "machine.identity"
    if machine.ca.key is None:
        cert_path, key_path = issued
        if cert_path.exists() and key_path.exists():  # a worker's, from trustd (talos_os.trustd.client)
            pair = pki.CertKey(cert_path.read_bytes(), key_path.read_bytes())
            pki.verify_issued_by(pair.cert, machine.ca.certificate())
            return pair, f"issued by trustd ({cert_path})"
        raise IdentityError(
            "osd has no server certificate: the machine config has no machine.identity, machine.ca "
            f"carries no key to issue one and trustd has issued none ({cert_path}); add "
            "machine.trustd.endpoints (the identity service asks trustd) or machine.identity"
        )
    ca = pki.CertKey.from_b64(machine.ca.crt, machine.ca.key)
    ips: list[str] = []
    names: list[str] = [hostname] if hostname else []
    for value in [*addresses, *machine.cert_sans]:
        try:
            ip = str(ipaddress.ip_address(value))
        except ValueError:
            if value not in names:
                names.append(value)
        else:
            if ip not in ips:
                ips.append(ip)
    cert = pki.issue_certificate(
        ca, hostname or "talos-os", dns_names=names, ip_addresses=ips, usage="server"
    )
    return cert, "issued by machine.ca"


def server_credentials(identity: pki.CertKey, ca_pem: bytes) -> grpc.ServerCredentials:
    """Mutual TLS: present ``identity``, require a client certificate chaining to ``ca_pem``."""
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


def accepts_tls12(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether the server at ``host:port`` answers a TLS 1.2 client hello with a server hello.

    The hello is made by Python's ssl module (TLS 1.2 only) and the first byte of the answer says
    it all: a handshake record (22) means TLS 1.2 was accepted; an alert, or grpc simply hanging
    up (what it does), means it was refused.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(hello)
        first = sock.recv(1)
    return first == b"\x16"


@dataclass(frozen=True)
class Caller:
    """The authenticated client of one call."""

    name: str  # the certificate's CN
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return pki.ROLE_ADMIN in self.roles


_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("osd_caller")


def current_caller() -> Caller:
    """Who called the method running now: the interceptor authorized them and set this (no second check)."""
    return _CALLER.get()


# Clients present the same certificate call after call: parse each once.
_parse = functools.lru_cache(maxsize=256)(pki.load_certificate)


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with ``code`` and ``message`` (``context.abort`` raises; this says so to the type checker)."""
    context.abort(code, message)
    raise AssertionError("grpc's context.abort returned")


class Authorizer:
    """Turns a call's peer certificate into a :class:`Caller`, or aborts the call saying why."""

    def __init__(self, ca_pem: bytes) -> None:
        self.ca = pki.load_certificate(ca_pem)

    def caller(self, context: grpc.ServicerContext) -> Caller:
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "no client certificate: present one signed by the cluster's OS CA (the talosconfig's crt)",
            )
        try:
            cert = _parse(bytes(pems[0]))
        except pki.PKIError as exc:
            abort(context, grpc.StatusCode.UNAUTHENTICATED, f"the client certificate cannot be parsed: {exc}")
        try:
            pki.verify_issued_by(cert, self.ca)
        except pki.PKIError as exc:
            abort(context, grpc.StatusCode.UNAUTHENTICATED, f"client certificate refused: {exc}")
        name = _common_name(cert)
        roles = frozenset(pki.roles_of(cert))
        if not roles:
            abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"client certificate {name!r} grants no role: its Organization must be "
                f"{pki.ROLE_ADMIN} or {pki.ROLE_READER}",
            )
        return Caller(name, roles)

    def authorize(self, context: grpc.ServicerContext, method: str) -> Caller:
        caller = self.caller(context)
        allowed = POLICY.get(method, frozenset())
        if not caller.roles & allowed:
            needed = (
                " or ".join(sorted(allowed)) or "a role no certificate has (the method is not in the policy)"
            )
            abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs {needed}; client certificate {caller.name!r} has "
                f"{', '.join(sorted(caller.roles))}",
            )
        return caller


def _internal(context: grpc.ServicerContext, method: str, exc: Exception) -> NoReturn:
    """Re-raise an abort; end any other failure as INTERNAL with one short line (never UNKNOWN)."""
    if context.code() not in (None, grpc.StatusCode.OK):
        raise exc  # context.abort already set the status
    text = str(exc) or type(exc).__name__
    text = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
    log.error("%s failed: %s: %s", method, type(exc).__name__, text)
    abort(context, grpc.StatusCode.INTERNAL, f"{method} failed on the node: {text}")


def _method_name(full: str) -> tuple[str, str]:
    """``/talos.os.v1.Node/Version`` -> (``talos.os.v1.Node``, ``Version``)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Runs :meth:`Authorizer.authorize`, then :class:`~talos_os.osd.limits.Admission`, before every method.

    The method sees its caller through :func:`current_caller` while it runs (a streaming method:
    until its stream ends), and holds its place in the admission counts as long. A failure that is
    not a deliberate abort ends the call as INTERNAL with a short message, never as grpc's UNKNOWN
    with a traceback in the log.
    """

    def __init__(self, authorizer: Authorizer, admission: Admission | None = None) -> None:
        self.authorizer = authorizer
        self.admission = admission

    @contextlib.contextmanager
    def _call(self, request: Any, context: grpc.ServicerContext, method: str) -> Iterator[None]:
        caller = self.authorizer.authorize(context, method)
        token = _CALLER.set(caller)
        try:
            with self._admitted(caller, request, context):
                yield
        except Exception as exc:
            _internal(context, method, exc)
        finally:
            _CALLER.reset(token)

    @contextlib.contextmanager
    def _admitted(self, caller: Caller, request: Any, context: grpc.ServicerContext) -> Iterator[None]:
        if self.admission is None:
            yield
            return
        follow = bool(getattr(request, "follow", False))
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.admission.admit(caller.name, admin=caller.is_admin, follow=follow))
            except Refused as exc:
                abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            yield

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        service, method = _method_name(details.method)
        if service != SERVICE:
            method = details.method  # another service's method: not in the policy, so refused

        def guard(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                with self._call(request, context, method):
                    return behavior(request, context)

            return guarded

        def guard_stream(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                # grpc runs the whole stream on one worker thread: caller and place last until it ends.
                with self._call(request, context, method):
                    yield from behavior(request, context)

            return guarded

        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(guard(handler.unary_unary), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(guard_stream(handler.unary_stream), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(guard(handler.stream_unary), **kw)
        return grpc.stream_stream_rpc_method_handler(guard(handler.stream_stream), **kw)
