"""osd: the node API servicer and the grpc server around it.

osd holds no power of its own over the node: reboot, shutdown, reset, service control, service
logs and service stats are requests to the init over its control socket
(:mod:`talos_os.lib.control`), and so are links and routes (the init holds netlink). What it
reads itself (processes, mounts, memory, the kernel log, files) it reads as root from /proc, /sys
and the file system.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from talos_os import __version__, api, pki
from talos_os.api.gen import node_pb2 as pb
from talos_os.api.gen import node_pb2_grpc as pb_grpc
from talos_os.lib import control
from talos_os.osd import containers, initcall, kmsg, limits, node, opener, transfer
from talos_os.osd import machine as machine_service
from talos_os.osd import upgrade as upgrade_service
from talos_os.osd.auth import (
    AuthInterceptor,
    Authorizer,
    abort,
    accepts_tls12,
    current_caller,
    server_credentials,
)
from talos_os.osd.initcall import ask_init
from talos_os.osd.kubeconfig import NoKubeconfig, admin_kubeconfig
from talos_os.osd.relay import Relay, RelayInterceptor
from talos_os.osd.startconfig import full_config
from talos_os.redact import LineRedactor

if TYPE_CHECKING:  # the config model (pydantic) loads only when a call needs it
    from talos_os.config import MachineConfig

log = logging.getLogger(__name__)

DEFAULT_PORT = 50000
DEFAULT_KUBECONFIG = Path("/etc/kubernetes/admin.conf")
LOGS_POLL = 1.0  # seconds a follow waits for new lines before checking the client is still there
HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to finish its TLS handshake
MAX_CONNECTIONS = 8192  # connections at once (each is a descriptor), well under FD_LIMIT
FD_LIMIT = 65536


class OsdError(Exception):
    """osd cannot serve; the message is one sentence for the console."""


@dataclass(frozen=True)
class Settings:
    """Where osd finds things on the node (tests point these at their own files and sockets)."""

    control_socket: Path = control.DEFAULT_SOCKET
    kmsg: Path = kmsg.DEFAULT_KMSG
    kubeconfig: Path = DEFAULT_KUBECONFIG
    cgroup_prefix: str = "/talos"  # the services' cgroups as /proc/PID/cgroup names them
    secret_paths: tuple[Path, ...] = field(default_factory=tuple)  # e.g. the machine config
    reader_trees: tuple[str, ...] = transfer.READER_TREES  # where an os:reader may Read files
    reader_id: int = opener.READER_ID  # the uid and gid that open files for readers
    machine_config: MachineConfig | None = None  # makes an admin kubeconfig before bootstrap
    config_path: Path | None = None  # else the machine config, loaded on first need (startconfig.full_config)
    relay: Relay | None = None  # forwards calls naming another node (osd.relay)


_TRANSFER_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid": grpc.StatusCode.FAILED_PRECONDITION,
    "bad_path": grpc.StatusCode.INVALID_ARGUMENT,
    "denied": grpc.StatusCode.PERMISSION_DENIED,
    "failed": grpc.StatusCode.INTERNAL,
}
SKIPPED_COUNT = api.SKIPPED_COUNT
SKIPPED_PATHS = api.SKIPPED_PATHS
SKIPPED_SHOWN = 10  # skipped paths named in the trailing metadata


MAX_ID = 253  # characters of a service or container id (a DNS name's length is plenty)


def _check_id(context: grpc.ServicerContext, ident: str) -> None:
    """Refuse a missing or absurd id before it reaches the init, a log line or an error message."""
    if not ident:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a service id is required")
    if len(ident) > MAX_ID or not ident.isprintable():
        abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{transfer.shown(ident)!r} is not a service or container id (at most {MAX_ID} printable characters)",
        )


class NodeServicer(pb_grpc.NodeServicer):  # type: ignore[misc]
    """Every method of ``talos.os.v1.Node``; authorization already happened (:class:`AuthInterceptor`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.opener = opener.Opener(settings.reader_id, settings.reader_id)

    # --- the init --------------------------------------------------------------------------------

    def _init(self, context: grpc.ServicerContext, op: str, **kw: Any) -> Any:
        return ask_init(context, self.settings.control_socket, op, **kw)

    def _action(self, context: grpc.ServicerContext, op: str) -> pb.ActionReply:
        caller = current_caller()
        log.warning("%s requested by %s", op, caller.name)
        return pb.ActionReply(message=str(self._init(context, op)))

    def Version(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.VersionReply:
        uname = os.uname()
        return pb.VersionReply(
            tag=__version__,
            api=api.API_VERSION,
            kernel=uname.release,
            arch=uname.machine,
            hostname=uname.nodename,
            python=platform.python_version(),
            grpc=grpc.__version__,
        )

    def Reboot(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ActionReply:
        return self._action(context, "reboot")

    def Shutdown(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ActionReply:
        return self._action(context, "shutdown")

    def Reset(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ActionReply:
        return self._action(context, "reset")

    # --- services --------------------------------------------------------------------------------

    def ServiceList(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ServiceListReply:
        services = []
        for s in self._init(context, "services"):
            code = s.get("exit_code")
            services.append(
                pb.ServiceInfo(
                    id=s["name"],
                    state=s["state"],
                    pid=s.get("pid") or 0,
                    restarts=s.get("restarts") or 0,
                    has_exit_code=code is not None,
                    exit_code=code or 0,
                    message=s.get("message") or "",
                    since=float(s.get("since") or 0.0),
                    depends=s.get("depends") or [],
                )
            )
        return pb.ServiceListReply(services=services)

    def _service_op(
        self,
        request: pb.ServiceRequest,
        context: grpc.ServicerContext,
        op: str,
        key: str,
        done: str,
        not_done: str,
    ) -> pb.ServiceActionReply:
        _check_id(context, request.id)
        caller = current_caller()
        log.warning("%s %s requested by %s", op, request.id, caller.name)
        ok = bool(self._init(context, op, name=request.id).get(key))
        return pb.ServiceActionReply(id=request.id, done=ok, message=done if ok else not_done)

    def ServiceStart(
        self, request: pb.ServiceRequest, context: grpc.ServicerContext
    ) -> pb.ServiceActionReply:
        return self._service_op(request, context, "service_start", "started", "started", "already running")

    def ServiceStop(self, request: pb.ServiceRequest, context: grpc.ServicerContext) -> pb.ServiceActionReply:
        return self._service_op(
            request, context, "service_stop", "stopped", "stopped", "did not stop in time"
        )

    def ServiceRestart(
        self, request: pb.ServiceRequest, context: grpc.ServicerContext
    ) -> pb.ServiceActionReply:
        return self._service_op(
            request,
            context,
            "service_restart",
            "restarted",
            "restarted",
            "could not be stopped for the restart",
        )

    def Stats(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.StatsReply:
        stats = []
        for name, s in sorted(self._init(context, "stats").items()):
            stats.append(
                pb.ServiceStat(
                    namespace=node.SERVICE_NAMESPACE,
                    id=name,
                    pid=s.get("pid") or 0,
                    cpu_usage_usec=s.get("cpu_usec") or 0,
                    memory_bytes=s.get("memory_bytes") or 0,
                    source=s.get("source") or "",
                )
            )
        return pb.StatsReply(stats=stats)

    def Processes(self, request: pb.ProcessesRequest, context: grpc.ServicerContext) -> pb.ProcessesReply:
        service_pids: dict[int, str] = {}
        try:
            resp = control.call(self.settings.control_socket, "services", timeout=initcall.CONTROL_TIMEOUT)
            for s in resp.get("result") or []:
                if s.get("pid"):
                    service_pids[int(s["pid"])] = s["name"]
        except (OSError, ValueError) as exc:
            log.info("processes without service names: %s", exc)  # cgroups still name them
        procs = node.processes(service_pids=service_pids, cgroup_prefix=self.settings.cgroup_prefix)
        return pb.ProcessesReply(
            processes=[
                pb.Process(**vars(p))
                for p in procs
                if not request.namespace or p.namespace == request.namespace
            ]
        )

    def Containers(self, request: pb.ContainersRequest, context: grpc.ServicerContext) -> pb.ContainersReply:
        try:
            found = containers.list_containers(request.kubernetes)
        except containers.ContainerError as exc:
            abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.ContainersReply(
            containers=[
                pb.Container(
                    namespace=c.namespace,
                    id=c.id,
                    image=c.image,
                    pid=c.pid,
                    status=c.status,
                    pod=c.pod,
                    name=c.name,
                )
                for c in found
            ]
        )

    def _container_logs(self, request: pb.LogsRequest, context: grpc.ServicerContext) -> Iterator[pb.Data]:
        """A Kubernetes container's output, from the CRI's log file."""
        try:
            found = containers.find(containers.list_containers(True), request.id)
        except containers.ContainerError as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        if found.log is None:
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"container {request.id!r} is a pod sandbox: it has no log",
            )
        tail = request.tail if request.has_tail else None
        try:
            for lines in containers.read_log(found.log, tail, request.follow, context.is_active):
                yield pb.Data(bytes=("\n".join(lines) + "\n").encode("utf-8", "replace"))
        except containers.ContainerError as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc))

    def Logs(self, request: pb.LogsRequest, context: grpc.ServicerContext) -> Iterator[pb.Data]:
        _check_id(context, request.id)
        if request.has_tail and request.tail < 0:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "tail must not be negative")
        if request.kubernetes:
            yield from self._container_logs(request, context)
            return
        cursor: int | None = None
        end: int | None = None
        while context.is_active():
            kw: dict[str, Any] = {"name": request.id, "wait": LOGS_POLL if request.follow else 0}
            if cursor is not None:
                kw["cursor"] = cursor
            elif request.has_tail:
                kw["tail"] = request.tail
            page = self._init(context, "logs", **kw)
            if end is None:
                end = int(page["end"])
            lines: list[str] = page["lines"]
            if page.get("missed"):
                lines = [f"[osd: {page['missed']} lines were dropped from the node's buffer]", *lines]
            if lines:
                yield pb.Data(bytes=("\n".join(lines) + "\n").encode("utf-8", "replace"))
            cursor = int(page["cursor"])
            if not request.follow and cursor >= end:
                return
            if request.follow and page.get("closed") and not page["lines"]:
                return  # the supervisor shut down: nothing more will come

    def Dmesg(self, request: pb.DmesgRequest, context: grpc.ServicerContext) -> Iterator[pb.Data]:
        if request.has_tail and request.tail < 0:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "tail must not be negative")
        try:
            chunks = kmsg.read(
                self.settings.kmsg,
                follow=request.follow,
                tail=request.tail if request.has_tail else None,
                active=context.is_active,
            )
            # The init redacts what it writes; anything else writing to the kernel log is redacted here.
            redact = LineRedactor()
            for chunk in chunks:
                lines = chunk.decode("utf-8", "replace").split("\n")
                yield pb.Data(bytes="\n".join(redact(line) for line in lines).encode())
        except OSError as exc:
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"cannot read the kernel log {self.settings.kmsg}: {exc}",
            )

    # --- node facts ------------------------------------------------------------------------------

    def Kubeconfig(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.Data:
        path = self.settings.kubeconfig
        try:
            return pb.Data(bytes=path.read_bytes())
        except FileNotFoundError:
            cfg = self.settings.machine_config
            if cfg is None and self.settings.config_path is not None:
                cfg = full_config(self.settings.config_path)
            if cfg is None:
                abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"no kubeconfig at {path} yet: Kubernetes has not been bootstrapped on this node",
                )
            try:  # not bootstrapped yet: a control plane still has the cluster CA to make one
                return pb.Data(bytes=admin_kubeconfig(cfg))
            except NoKubeconfig as exc:
                abort(context, grpc.StatusCode.NOT_FOUND, f"no kubeconfig at {path} and {exc}")
        except OSError as exc:
            abort(context, grpc.StatusCode.INTERNAL, f"cannot read {path}: {exc.strerror}")

    def Routes(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.RoutesReply:
        return pb.RoutesReply(routes=[pb.Route(**r) for r in self._init(context, "routes")])

    def Interfaces(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.InterfacesReply:
        return pb.InterfacesReply(interfaces=[pb.Interface(**i) for i in self._init(context, "interfaces")])

    def Mounts(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.MountsReply:
        return pb.MountsReply(mounts=[pb.Mount(**vars(m)) for m in node.mounts()])

    def Memory(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.MemoryReply:
        info = node.meminfo()
        return pb.MemoryReply(
            total=info.get("MemTotal", 0),
            free=info.get("MemFree", 0),
            available=info.get("MemAvailable", 0),
            buffers=info.get("Buffers", 0),
            cached=info.get("Cached", 0),
            shared=info.get("Shmem", 0),
            swap_total=info.get("SwapTotal", 0),
            swap_free=info.get("SwapFree", 0),
            fields=info,
        )

    # --- files -----------------------------------------------------------------------------------

    def _stream(
        self, context: grpc.ServicerContext, make: Callable[[], Iterator[bytes]]
    ) -> Iterator[pb.Data]:
        try:
            for chunk in make():
                yield pb.Data(bytes=chunk)
        except transfer.TransferError as exc:
            abort(context, _TRANSFER_CODES[exc.kind], str(exc))

    def CopyOut(self, request: pb.CopyOutRequest, context: grpc.ServicerContext) -> Iterator[pb.Data]:
        caller = current_caller()
        path = request.path
        log.info("copy out %s by %s", transfer.shown(path), caller.name)
        skipped: list[str] = []
        yield from self._stream(context, lambda: transfer.tar_stream(path, context.is_active, skipped))
        if skipped:
            log.warning("copy out %s left out %d entries", transfer.shown(path), len(skipped))
            # A header value is printable ASCII: a JSON list with escapes is one.
            shown = json.dumps([transfer.shown(p) for p in skipped[:SKIPPED_SHOWN]])
            context.set_trailing_metadata(((SKIPPED_COUNT, str(len(skipped))), (SKIPPED_PATHS, shown)))

    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> Iterator[pb.Data]:
        caller = current_caller()
        path = request.path
        if caller.is_admin:
            return self._stream(context, lambda: transfer.read_file(path, context.is_active))
        try:
            secret = "\0" not in path and transfer.is_secret(path, self.settings.secret_paths)
        except OSError:  # a path too long to resolve: the confined read says what is wrong
            secret = False
        if secret:
            abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{transfer.shown(path)} holds secrets (or is not world-readable): reading it needs "
                f"{pki.ROLE_ADMIN}",
            )

        def confined() -> Iterator[bytes]:
            try:
                return transfer.read_as_reader(
                    path, self.settings.reader_trees, self.opener, context.is_active
                )
            except transfer.TransferError as exc:
                if exc.kind == "denied":
                    raise transfer.TransferError(
                        "denied", f"{exc}: reading it needs {pki.ROLE_ADMIN}"
                    ) from None
                raise

        return self._stream(context, confined)


class Osd:
    """The grpc server: mutual TLS 1.3 on ``address:port``, every call authorized, methods served."""

    def __init__(
        self,
        identity: pki.CertKey,
        ca_pem: bytes,
        settings: Settings | None = None,
        *,
        address: str = "[::]",
        port: int = DEFAULT_PORT,
        max_workers: int = 64,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.identity = identity
        self.ca_pem = ca_pem
        self.settings = settings or Settings()
        self.address = address
        self.port = port
        self.max_workers = max_workers
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.admission = limits.Admission(limits.for_workers(max_workers))
        self.tls_check_seconds: float | None = None  # how long the TLS 1.2 probe took
        self._server: grpc.Server | None = None
        self._servicer: NodeServicer | None = None

    def start(self, *, prove_tls: bool = True) -> int:
        """Listen, serve, and (``prove_tls``) prove TLS 1.2 is refused; the bound port (useful with
        port 0). osd's main proves it beside serving instead (:meth:`prove_tls_policy`), which keeps
        the probe's round trips off the boot's path."""
        raise_fd_limit()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="osd"),
            interceptors=self._interceptors(),
            options=[
                ("grpc.so_reuseport", 0),  # a second osd on the same port must fail, not share it
                # A connection that has not finished its TLS handshake in time is closed, and there
                # are never more connections than descriptors to spare.
                ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout * 1000)),
                ("grpc.max_allowed_incoming_connections", self.max_connections),
            ],
            maximum_concurrent_rpcs=self.max_workers * 4,
        )
        self._servicer = NodeServicer(self.settings)
        pb_grpc.add_NodeServicer_to_server(self._servicer, server)
        upgrade_service.register(server, self.settings.control_socket)
        machine_service.register(server, self.settings.control_socket)
        creds = server_credentials(self.identity, self.ca_pem)
        bound = _bind(server, creds, self.address, self.port)
        if not bound:
            raise OsdError(
                f"osd cannot listen on {self.address} port {self.port}: it is in use or the address is not "
                "on this node; free the port or pass another --port"
            )
        server.start()
        self._server = server
        threading.Thread(target=self._servicer.opener.warm, name="opener-warm", daemon=True).start()
        self.port = bound
        if prove_tls:
            self.prove_tls_policy()
        log.info("osd listening on %s port %d (mutual TLS 1.3)", self.address, bound)
        return bound

    def prove_tls_policy(self) -> None:
        """Offer our own server a TLS 1.2 hello; if it was accepted, stop serving and raise OsdError."""
        began = time.monotonic()
        accepted = self._tls12_accepted(self.port)
        self.tls_check_seconds = time.monotonic() - began
        if accepted:
            self.stop()
            raise OsdError(
                "grpc accepted a TLS 1.2 handshake, so osd refuses to serve: grpc was loaded before "
                "talos_os.api set GRPC_SSL_CIPHER_SUITES (import talos_os.api first)"
            )

    def _interceptors(self) -> list[grpc.ServerInterceptor]:
        """Authorization for every call; before it, the relay of calls naming another node."""
        auth = AuthInterceptor(Authorizer(self.ca_pem), self.admission)
        return [RelayInterceptor(auth, self.settings.relay), auth]

    def _tls12_accepted(self, port: int) -> bool:
        """Offer our own server a TLS 1.2 hello over loopback (or the bound address).

        If no probe can connect (loopback still down early in boot), say so and serve: the
        policy is set in code (talos_os.api) and the tests prove it; the probe guards against a
        refactoring that loads grpc first.
        """
        wildcard = self.address in ("[::]", "0.0.0.0", "")
        hosts = ["127.0.0.1", "::1"] if wildcard else [self.address.strip("[]")]
        for host in hosts:
            try:
                return accepts_tls12(host, port)
            except OSError as exc:
                log.info("TLS policy probe on %s port %d failed: %s", host, port, exc)
        log.warning("osd could not probe its own TLS policy (no loopback yet?): serving anyway")
        return False

    def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._servicer is not None:
            self._servicer.opener.close()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> Osd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def raise_fd_limit(want: int = FD_LIMIT) -> int:
    """Raise RLIMIT_NOFILE towards ``want`` (the hard limit too, as root); the soft limit now.

    Every connection, even one that never finishes its handshake, costs a descriptor: the default
    1024 ran out under 1,100 half-open connections and the API stopped answering.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard limit
            return want
        except (ValueError, OSError):
            pass  # not root: as far as the hard limit goes
    top = want if hard == resource.RLIM_INFINITY else min(hard, max(soft, want))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, top), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _bind(server: grpc.Server, creds: grpc.ServerCredentials, address: str, port: int) -> int:
    """Bind and return the port (0 on failure); ``[::]`` falls back to IPv4 on a node without IPv6."""
    host = address if not (":" in address and not address.startswith("[")) else f"[{address}]"
    try:
        bound = int(server.add_secure_port(f"{host}:{port}", creds))
    except RuntimeError:
        bound = 0
    if not bound and address == "[::]":
        try:
            bound = int(server.add_secure_port(f"0.0.0.0:{port}", creds))
        except RuntimeError:
            bound = 0
    return bound
