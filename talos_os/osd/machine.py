"""``talos.os.v1.Machine`` on a configured node: apply a new machine config, list the disks.

osd holds no power to change the node: ApplyConfiguration is relayed to the init's control socket
(op ``apply_config``), which validates the config, refuses another cluster's, works out what
changed and applies it live, saves it for a reboot or stages it (:mod:`talos_os.init.reconfigure`).
Roles: ApplyConfiguration needs os:admin, Disks any role (:data:`talos_os.osd.auth.POLICY`).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import grpc

from talos_os.api.gen import machine_pb2 as mpb
from talos_os.api.gen import machine_pb2_grpc as mpb_grpc
from talos_os.lib import control
from talos_os.maintenance import disks
from talos_os.maintenance.server import disk_reply
from talos_os.osd.auth import abort, current_caller
from talos_os.osd.initcall import ask_init

log = logging.getLogger(__name__)

MODES = {
    mpb.APPLY_AUTO: "auto",
    mpb.APPLY_NO_REBOOT: "no-reboot",
    mpb.APPLY_REBOOT: "reboot",
    mpb.APPLY_STAGED: "staged",
}
TIMEOUT = 60.0  # applying writes files and sysctls: quick, but the node may be busy


class MachineServicer(mpb_grpc.MachineServicer):
    """ApplyConfiguration through the init; Disks from sysfs."""

    def __init__(self, control_socket: Path) -> None:
        self.control_socket = control_socket

    def ApplyConfiguration(
        self, request: mpb.ApplyConfigurationRequest, context: grpc.ServicerContext
    ) -> mpb.ApplyConfigurationReply:
        mode = MODES.get(request.mode)
        if mode is None:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown apply mode {request.mode}")
        if not request.data:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the request carries no config")
        caller = current_caller()
        log.warning(
            "apply-config (mode %s%s) requested by %s",
            mode,
            ", dry run" if request.dry_run else "",
            caller.name,
        )
        data = base64.b64encode(request.data).decode("ascii")
        if len(data) > control.MAX_LINE - 1024:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the config is too large ({len(request.data)} bytes)",
            )
        result = (
            ask_init(
                context,
                self.control_socket,
                "apply_config",
                timeout=TIMEOUT,
                refused="the init refused the config",
                data=data,
                mode=mode,
                dry_run=request.dry_run,
            )
            or {}
        )
        return mpb.ApplyConfigurationReply(
            message=str(result.get("message", "")),
            action=str(result.get("action", "")),
            changes=[
                mpb.ConfigChange(path=str(c["path"]), live=bool(c["live"])) for c in result.get("changes", [])
            ],
        )

    def Disks(self, request: mpb.MachineNothing, context: grpc.ServicerContext) -> mpb.DisksReply:
        return disk_reply(disks.list_disks())


def register(server: grpc.Server, control_socket: Path) -> None:
    """Serve the Machine service on ``server`` (its roles are in :data:`talos_os.osd.auth.POLICY`)."""
    mpb_grpc.add_MachineServicer_to_server(MachineServicer(control_socket), server)  # type: ignore[no-untyped-call]
