"""The init's control socket as its clients see it: the path, the failure codes and :func:`call`.

osd (and the host tools' tests) talk to PID 1 through this module alone; the server, with its
handlers and the supervisor they drive, is :mod:`talos_os.init.control`. Keeping the client apart
keeps the supervisor out of osd's imports and memory.

The wire format: JSON lines over a unix stream socket; a request ``{"op": ..., ...}`` gets one
answer ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...", "code": CODE}``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

DEFAULT_SOCKET = Path("/run/talos/init.sock")
MAX_LINE = 64 * 1024  # bytes of a request line

# What kind of failure an ``ok: false`` answer is; osd maps each to a gRPC status code.
BAD_REQUEST = "bad_request"  # not JSON, no op, an unknown op, a missing or wrong argument
NOT_FOUND = "not_found"  # no such service (or other named thing)
INVALID = "invalid"  # the request's content is wrong (e.g. a machine config that does not validate)
FAILED_PRECONDITION = "failed_precondition"  # right request, wrong moment (the node's state refuses it)
DENIED = "denied"  # the peer may not use the socket
INTERNAL = "internal"  # the handler failed unexpectedly (logged by the init)
CODES = (BAD_REQUEST, NOT_FOUND, INVALID, FAILED_PRECONDITION, DENIED, INTERNAL)


class ControlError(Exception):
    """A request that cannot be served; the message goes back as ``error`` and ``code`` with it."""

    def __init__(self, message: str, code: str = FAILED_PRECONDITION) -> None:
        super().__init__(message)
        self.code = code


def refusal(message: str, code: str) -> dict[str, Any]:
    """One ``ok: false`` answer."""
    return {"ok": False, "error": message, "code": code}


def call(
    path: Path | str = DEFAULT_SOCKET, op: str = "ping", *, timeout: float = 30.0, **kw: Any
) -> dict[str, Any]:
    """Send one request and return the response object (``{"ok": ..., "result"|"error": ...}``).

    Connection failures raise OSError; errors reported by init come back as ``ok: false``. A full
    listen backlog (EAGAIN: the init is accepting, just not fast enough) is retried until ``timeout``.
    """
    req = {"op": op, **kw}
    with _connect(path, timeout) as sock:
        # The server may refuse (and hang up) before reading the request: its reason is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps(req, separators=(",", ":")).encode() + b"\n")
        with sock.makefile("rb") as reader:
            line = reader.readline(16 * MAX_LINE)
    if not line:
        raise ConnectionError(f"{path}: connection closed without a response")
    resp = json.loads(line)
    if not isinstance(resp, dict):
        raise ValueError(f"{path}: malformed response {line[:200]!r}")
    return resp


def _connect(path: Path | str, timeout: float) -> socket.socket:
    """A connected socket; a momentarily full backlog is waited out (with backoff) until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:  # EAGAIN: the backlog is full right now
            sock.close()
            if time.monotonic() + delay > deadline:
                raise
        except BaseException:
            sock.close()
            raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
