"""The init's local control socket, its server side: how osd asks PID 1 to reboot, shut down or
manage services.

A unix stream socket (default ``/run/talos/init.sock``, mode 0600) speaking JSON lines: each
request line ``{"op": ..., "name": ...}`` gets one response line ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "...", "code": CODE}``, where CODE says what kind of failure it is
(:data:`talos_os.lib.control.CODES`, so osd maps it to a gRPC status without reading the message).
The client, the codes and :class:`~talos_os.lib.control.ControlError` live in
:mod:`talos_os.lib.control`, so osd never imports this module. Only peers whose SO_PEERCRED uid is
allowed (root) are served: the socket is the init's whole API, and osd (not this socket)
authenticates remote users.
Handlers are injected, so tests wire a real :class:`~talos_os.init.supervisor.Supervisor`.
Handlers must return quickly: reboot, shutdown and reset handlers only *request* the action (the
reply is sent before the machine goes down). The one op that blocks is ``logs`` with ``wait``: a
long poll (at most :data:`MAX_WAIT` seconds) that lets osd follow a service's output.

Ops: ``ping``; ``reboot``, ``shutdown``, ``reset``; ``services``, ``service_start``/``_stop``/
``_restart`` (``name``); ``stats`` (per service: pid, cgroup CPU ``cpu_usec`` and ``memory_bytes``);
``logs`` (``name``; ``cursor`` or ``tail``; ``wait``; ``max_bytes``), which answers
``{"lines": [...], "cursor": next, "end": newest, "missed": n, "closed": bool}``; ``interfaces``,
``routes`` and ``addresses`` (the node's network, read by the init, which already holds netlink:
:func:`network_handlers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from talos_os.init.supervisor import LogBuffer, Supervisor
from talos_os.lib import netinfo
from talos_os.lib.cgroups import Usage
from talos_os.lib.control import (
    BAD_REQUEST,
    DEFAULT_SOCKET,
    DENIED,
    INTERNAL,
    MAX_LINE,
    NOT_FOUND,
    ControlError,
    refusal,
)

log = logging.getLogger(__name__)

OPS = (
    "ping",
    "reboot",
    "shutdown",
    "reset",
    "service_start",
    "service_stop",
    "service_restart",
    "services",
    "stats",
    "logs",
    "interfaces",
    "routes",
    "addresses",
)
MAX_WAIT = 10.0  # seconds a logs long poll may block (well under the client's timeout)
LOGS_MAX_BYTES = 512 * 1024  # JSON-encoded lines per logs answer (a response line stays under 1 MiB)
LOGS_MAX_LINES = 8192  # and at most this many lines
Handler = Callable[[dict[str, Any]], Any]
_UCRED = struct.Struct("3i")  # pid, uid, gid


def _name(req: Mapping[str, Any]) -> str:
    name = req.get("name")
    if not isinstance(name, str) or not name:
        raise ControlError(f"{req.get('op')}: a service 'name' is required", BAD_REQUEST)
    return name


def _int(req: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = req.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ControlError(f"{req.get('op')}: {key!r} must be a non-negative integer", BAD_REQUEST)
    return value


def read_logs(buf: LogBuffer, req: Mapping[str, Any]) -> dict[str, Any]:
    """One page of a service's log: from ``cursor`` (else the last ``tail`` lines, else all kept).

    With ``wait`` > 0 and nothing new, block until a line comes (or ``wait``, capped at
    :data:`MAX_WAIT`, passes). ``missed`` counts lines evicted from the ring before they were read.
    """
    cursor = _int(req, "cursor", None)
    tail = _int(req, "tail", None)
    max_bytes = _int(req, "max_bytes", LOGS_MAX_BYTES) or LOGS_MAX_BYTES
    wait = req.get("wait", 0)
    if not isinstance(wait, int | float) or isinstance(wait, bool) or wait < 0:
        raise ControlError("logs: 'wait' must be a non-negative number of seconds", BAD_REQUEST)
    if cursor is None:
        cursor = max(0, buf.cursor - tail) if tail is not None else 0
    page_lines = max(1, min(LOGS_MAX_LINES, max_bytes // 3))  # an empty line costs 3 bytes
    start, lines, end = buf.page(cursor, page_lines)
    if not lines and wait > 0 and not buf.closed:
        buf.wait_for_more(cursor, min(float(wait), MAX_WAIT))
        start, lines, end = buf.page(cursor, page_lines)
    # Fill the page by raw length (a quoted line costs its length + 3), then check the real
    # encoded size once: escapes (control characters, non-ASCII) can make it bigger.
    taken, size = 0, 2
    for line in lines:
        size += len(line) + 3
        if taken and size > max_bytes:
            break
        taken += 1
    chosen = lines[:taken]
    while len(chosen) > 1 and len(json.dumps(chosen, separators=(",", ":"))) > max_bytes:
        chosen = chosen[: len(chosen) // 2]
    return {
        "lines": chosen,
        "cursor": start + len(chosen),
        "end": end,
        "missed": max(0, start - cursor),
        "closed": buf.closed,
    }


def supervisor_handlers(
    supervisor: Supervisor,
    *,
    reboot: Callable[[], None],
    shutdown: Callable[[], None],
    reset: Callable[[], None] | None = None,
) -> dict[str, Handler]:
    """Handlers for every op, backed by ``supervisor``; ``reboot``/``shutdown``/``reset`` start the action.

    ``reset`` (stop services, wipe EPHEMERAL, reboot) is refused when no callback is given.
    """

    def service_start(req: dict[str, Any]) -> Any:
        return {"started": supervisor.start_service(_name(req))}

    def service_stop(req: dict[str, Any]) -> Any:
        return {"stopped": supervisor.stop_service(_name(req))}

    def service_restart(req: dict[str, Any]) -> Any:
        return {"restarted": supervisor.restart_service(_name(req))}

    def services(_req: dict[str, Any]) -> Any:
        return [info.as_dict() for info in supervisor.services()]

    def do_reboot(_req: dict[str, Any]) -> Any:
        reboot()
        return "rebooting"

    def do_shutdown(_req: dict[str, Any]) -> Any:
        shutdown()
        return "shutting down"

    def do_reset(_req: dict[str, Any]) -> Any:
        if reset is None:
            raise ControlError("reset is not available on this node")
        reset()
        return "resetting"

    def stats(_req: dict[str, Any]) -> Any:
        unknown = dict.fromkeys(f.name for f in dataclasses.fields(Usage))
        return {
            name: {"pid": pid, **(dataclasses.asdict(usage) if usage is not None else unknown)}
            for name, (pid, usage) in supervisor.usage().items()
        }

    def logs(req: dict[str, Any]) -> Any:
        return read_logs(supervisor.logs(_name(req)), req)

    return {
        "service_start": service_start,
        "service_stop": service_stop,
        "service_restart": service_restart,
        "services": services,
        "reboot": do_reboot,
        "shutdown": do_shutdown,
        "reset": do_reset,
        "stats": stats,
        "logs": logs,
    }


def network_handlers() -> dict[str, Handler]:
    """``interfaces``, ``routes`` and ``addresses``: the node's network as plain JSON, so osd (a
    client of this socket) answers its Interfaces and Routes calls without loading netlink itself."""

    def interfaces(_req: dict[str, Any]) -> Any:
        return [dataclasses.asdict(i) for i in netinfo.interfaces()]

    def routes(_req: dict[str, Any]) -> Any:
        return [dataclasses.asdict(r) for r in netinfo.routes()]

    def addresses(req: dict[str, Any]) -> Any:
        return netinfo.addresses(include_loopback=bool(req.get("loopback", True)))

    return {"interfaces": interfaces, "routes": routes, "addresses": addresses}


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (from the kernel, unforgeable)."""
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def dispatch(handlers: Mapping[str, Handler], line: bytes) -> dict[str, Any]:
    """Turn one request line into one response object (never raises)."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return refusal(f"bad request: not JSON ({exc})", BAD_REQUEST)
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        return refusal("bad request: expected an object with an 'op' string", BAD_REQUEST)
    op = req["op"]
    if op == "ping":
        return {"ok": True, "result": "pong"}
    handler = handlers.get(op)
    if handler is None:
        return refusal(f"unknown op {op!r}: expected one of {', '.join(OPS)}", BAD_REQUEST)
    try:
        return {"ok": True, "result": handler(req)}
    except ControlError as exc:
        return refusal(str(exc), exc.code)
    except KeyError as exc:  # the supervisor's "no service named ..."
        return refusal(str(exc.args[0]) if exc.args else "not found", NOT_FOUND)
    except Exception as exc:
        log.exception("control op %s failed", op)
        return refusal(f"{op} failed: {type(exc).__name__}: {exc}", INTERNAL)


class ControlServer:
    """Serves the control socket from a background thread; one thread per connection."""

    def __init__(
        self,
        path: Path | str = DEFAULT_SOCKET,
        handlers: Mapping[str, Handler] | None = None,
        *,
        allowed_uids: Collection[int] = (0,),
        idle_timeout: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers or {})
        self.allowed_uids = frozenset(allowed_uids)
        self.idle_timeout = idle_timeout
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bind (replacing a stale socket from a previous boot) and start accepting."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            listener.listen(socket.SOMAXCONN)  # osd may open one connection per log follower at once
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="control-accept", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close open connections, remove the socket file."""
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, t in conns:
            t.join(5.0)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None

    def _serve(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select():
                    if key.fileobj is not self._listener or self._stop.is_set():
                        continue
                    try:
                        conn, _addr = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        log.warning("control socket accept failed: %s", exc)
                        continue
                    conn.setblocking(True)
                    t = threading.Thread(target=self._handle, args=(conn,), name="control-conn", daemon=True)
                    with self._lock:
                        self._conns[conn] = t
                    t.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.idle_timeout)
            uid = peer_uid(conn)
            if uid not in self.allowed_uids:
                log.warning("control socket: refused a client with uid %d", uid)
                _send(conn, refusal(f"permission denied for uid {uid}", DENIED))
                return
            with conn.makefile("rb") as reader:
                while not self._stop.is_set():
                    line = reader.readline(MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > MAX_LINE:
                        _send(conn, refusal(f"request longer than {MAX_LINE} bytes", BAD_REQUEST))
                        return
                    if not line.strip():
                        continue
                    _send(conn, dispatch(self.handlers, line))
        except (OSError, ValueError):
            pass  # client went away, idle timeout, or server stopping
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()


def _send(conn: socket.socket, obj: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")
