"""The maintenance API server: TLS without client certificates, three calls, everything else refused.

``Node.Version`` and ``Machine.Disks`` answer anyone who completes the TLS handshake;
``Machine.ApplyConfiguration`` checks the config (:mod:`talos_os.maintenance.push`) and, once one is
accepted, writes it to the handoff file for the init and stops the server: a second config is
refused, and the insecure port closes. The package imports :mod:`talos_os.api` before grpc loads, so
TLS 1.2 is refused here as in osd.
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn

import grpc

from talos_os import __version__, api, pki
from talos_os.api.gen import machine_pb2 as mpb
from talos_os.api.gen import machine_pb2_grpc as mpb_grpc
from talos_os.api.gen import node_pb2 as npb
from talos_os.maintenance import REFUSED, disks, push

NODE_SERVICE = "talos.os.v1.Node"
STOP_AFTER = 1.0  # seconds between the accepting reply and closing the port


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc's context.abort returned")


def disk_reply(found: list[disks.Disk]) -> mpb.DisksReply:
    """The Disks answer (shared with osd)."""
    return mpb.DisksReply(
        disks=[
            mpb.DiskInfo(
                name=d.name,
                path=d.path,
                size=d.size,
                model=d.model,
                serial=d.serial,
                read_only=d.read_only,
                removable=d.removable,
                rotational=d.rotational,
                contents=d.contents,
            )
            for d in found
        ]
    )


class MaintenanceServicer(mpb_grpc.MachineServicer):
    """``Machine`` in maintenance mode; ``accepted`` is called once with the accepted config's bytes."""

    def __init__(self, image_size: int | None, accepted: Callable[[bytes], None]) -> None:
        self.image_size = image_size
        self.accepted = accepted
        self._lock = threading.Lock()
        self._done = False

    def ApplyConfiguration(
        self, request: mpb.ApplyConfigurationRequest, context: grpc.ServicerContext
    ) -> mpb.ApplyConfigurationReply:
        try:
            result = push.check_push(request.data, self.image_size)
        except push.PushError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.dry_run:
            return mpb.ApplyConfigurationReply(message=f"dry run: {result.message}", action="none")
        with self._lock:
            if self._done:
                _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "a config was already accepted and the node is applying it",
                )
            self._done = True
        self.accepted(bytes(request.data))
        return mpb.ApplyConfigurationReply(message=result.message, action=result.action)

    def Disks(self, request: mpb.MachineNothing, context: grpc.ServicerContext) -> mpb.DisksReply:
        return disk_reply(disks.list_disks())


def version(request: npb.Empty, context: grpc.ServicerContext) -> npb.VersionReply:
    uname = os.uname()
    return npb.VersionReply(
        tag=__version__,
        api=api.API_VERSION,
        kernel=uname.release,
        arch=uname.machine,
        hostname=uname.nodename,
        python=platform.python_version(),
        grpc=grpc.__version__,
    )


def _refuse(request: Any, context: grpc.ServicerContext) -> Any:
    _abort(context, grpc.StatusCode.PERMISSION_DENIED, REFUSED)


class Refuse(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every method no other handler serves: refused with a sentence (never grpc's bare UNIMPLEMENTED)."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(_refuse)


class MaintenanceServer:
    """The grpc server on ``port`` with the self-signed certificate; ``wait`` returns once it stopped."""

    def __init__(
        self,
        cert_pem: bytes,
        key_pem: bytes,
        handoff: Path,
        *,
        image_size: int | None,
        port: int,
        address: str = "[::]",
    ) -> None:
        self.handoff = handoff
        self.stopped = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="maint"))
        self.servicer = MaintenanceServicer(image_size, self._accepted)
        mpb_grpc.add_MachineServicer_to_server(self.servicer, self.server)  # type: ignore[no-untyped-call]
        node = {
            "Version": grpc.unary_unary_rpc_method_handler(
                version,
                request_deserializer=npb.Empty.FromString,
                response_serializer=npb.VersionReply.SerializeToString,
            )
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(NODE_SERVICE, node), Refuse())
        )
        creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], require_client_auth=False)
        self.port = 0
        for host in (address, "0.0.0.0"):
            try:
                self.port = int(self.server.add_secure_port(f"{host}:{port}", creds))
            except RuntimeError:
                self.port = 0
            if self.port:
                break
        if not self.port:
            raise OSError(f"the maintenance API cannot listen on port {port}: it is in use")

    def _accepted(self, data: bytes) -> None:
        pki.write_secret(self.handoff, data)
        threading.Thread(target=self._stop_soon, name="maint-stop", daemon=True).start()

    def _stop_soon(self) -> None:
        self.stopped.wait(STOP_AFTER)  # let the reply reach the client first
        self.server.stop(grace=2.0).wait()
        self.stopped.set()

    def start(self) -> int:
        self.server.start()
        return self.port

    def stop(self) -> None:
        self.server.stop(grace=0.5).wait()
        self.stopped.set()
