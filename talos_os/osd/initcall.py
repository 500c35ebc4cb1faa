"""osd's requests to the init's control socket, answered as gRPC: a result, or the call aborted.

Every servicer asks the init the same way, so the failures read the same everywhere: an init that
cannot be reached is UNAVAILABLE, and a refusal keeps the init's sentence with the gRPC status its
code maps to (:data:`STATUS_OF`; never a guess from the message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from talos_os.lib import control
from talos_os.osd.auth import abort

CONTROL_TIMEOUT = 30.0  # seconds; the init answers at once (only a logs long poll waits, for less)

# The init's control-socket failure codes (talos_os.lib.control.CODES) as gRPC statuses.
STATUS_OF = {
    control.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    control.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    control.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    control.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    control.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    control.INTERNAL: grpc.StatusCode.INTERNAL,
}


def control_status(resp: dict[str, Any]) -> grpc.StatusCode:
    """The gRPC status of the init's ``ok: false`` answer, from its code (an unknown one: FAILED_PRECONDITION)."""
    return STATUS_OF.get(str(resp.get("code")), grpc.StatusCode.FAILED_PRECONDITION)


def ask_init(
    context: grpc.ServicerContext,
    control_socket: Path,
    op: str,
    *,
    timeout: float = CONTROL_TIMEOUT,
    refused: str = "the init refused the request",
    **kw: Any,
) -> Any:
    """The init's result for ``op``; the RPC is aborted when the init is unreachable or refuses."""
    try:
        resp = control.call(control_socket, op, timeout=timeout, **kw)
    except (OSError, ValueError) as exc:
        abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            f"osd cannot reach the init's control socket {control_socket}: {exc}",
        )
    if not resp.get("ok"):
        abort(context, control_status(resp), str(resp.get("error", refused)))
    return resp.get("result")
