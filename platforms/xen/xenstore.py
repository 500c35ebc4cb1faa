"""Xen guest half: a xenstore client speaking the wire protocol, and the config lookup.

Each message is a header of four native-endian uint32 ``(type, req_id, tx_id, len)`` followed by
``len`` bytes of payload (at most 4096). A request goes out in a single write() (the xenbus
device takes one message per write); the reply is read as header, then payload. The transport
is the guest's ``/dev/xen/xenbus`` (or ``/proc/xen/xenbus`` on old kernels) or a unix socket
(dom0's xenstored socket, and the tests' wire-speaking server).

XenServer/XCP-ng copy ``xenstore-data:vm-data/<key>`` into the guest's ``vm-data/``: the config
is ``vm-data/user-data`` (whole, or split into ``vm-data/user-data/0``, ``/1``... because values
are small) or a URL in ``vm-data/talos-config-url``. Relative paths are resolved by xenstored
under ``/local/domain/<domid>/`` and are sent as they are.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from talos_os.lib.fetch import ConfigRef

XS_DIRECTORY = 1
XS_READ = 2
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_WRITE = 11

HEADER = struct.Struct("=IIII")
PAYLOAD_MAX = 4096
DEVICE_PATHS = ("/dev/xen/xenbus", "/proc/xen/xenbus")

USER_DATA_KEY = "vm-data/user-data"
CONFIG_URL_KEY = "vm-data/talos-config-url"


class XenstoreError(Exception):
    """xenstored answered with an error (``errno_name`` such as ``EACCES``), or the exchange failed."""

    def __init__(self, message: str, errno_name: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno_name = errno_name
        self.path = path


class XenstoreNotFound(XenstoreError):
    """ENOENT: the path does not exist (callers usually treat this as "absent")."""


class XenstoreProtocolError(XenstoreError):
    """The other side broke the protocol (oversized or mismatched reply); the connection is closed."""


class XenstoreTooLarge(XenstoreError):
    """A request payload over 4096 bytes, refused before anything is sent."""


class Transport(Protocol):
    """A byte stream to xenstored."""

    def send(self, data: bytes) -> None: ...
    def recv_exact(self, n: int) -> bytes: ...
    def close(self) -> None: ...


class SocketTransport:
    """A unix stream socket (dom0 xenstored, tests)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise XenstoreProtocolError(f"xenstore connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self._sock.close()


class DeviceTransport:
    """The xenbus character device: one write() per message, poll() for the timeout."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._timeout_ms = None if timeout is None else int(timeout * 1000)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def send(self, data: bytes) -> None:
        written = os.write(self._fd, data)
        if written != len(data):
            raise XenstoreProtocolError(f"short write to xenbus: {written} of {len(data)} bytes")

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if not self._poll.poll(self._timeout_ms):
                raise TimeoutError("xenbus did not answer in time")
            chunk = os.read(self._fd, n - len(buf))
            if not chunk:
                raise XenstoreProtocolError(f"xenbus closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        os.close(self._fd)


def _encode_path(path: str) -> bytes:
    if "\0" in path or not path:
        raise ValueError(f"invalid xenstore path {path!r}")
    return path.encode("utf-8")


class XenstoreClient:
    """Blocking, one-request-at-a-time xenstore client (enough for reading a config at boot)."""

    def __init__(self, transport: Transport) -> None:
        self._transport: Transport | None = transport
        self._req_id = 0

    @classmethod
    def open_socket(cls, path: str, timeout: float | None = 10.0) -> XenstoreClient:
        return cls(SocketTransport(path, timeout))

    @classmethod
    def open_device(cls, paths: Sequence[str] = DEVICE_PATHS, timeout: float | None = 10.0) -> XenstoreClient:
        """Open the first xenbus device that exists (``/dev/xen/xenbus``, then ``/proc/xen/xenbus``)."""
        errors = []
        for path in paths:
            try:
                return cls(DeviceTransport(path, timeout))
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror or exc}")
        raise XenstoreError("no xenbus device: " + "; ".join(errors))

    def __enter__(self) -> XenstoreClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _broken(self, message: str) -> XenstoreProtocolError:
        """Close the connection (the stream can no longer be trusted) and build the error."""
        self.close()
        return XenstoreProtocolError(message)

    def request(self, msg_type: int, payload: bytes, path: str | None = None) -> bytes:
        """Send one message and return the reply payload; ERROR replies raise :class:`XenstoreError`."""
        if len(payload) > PAYLOAD_MAX:
            raise XenstoreTooLarge(
                f"xenstore request of {len(payload)} bytes is over the {PAYLOAD_MAX}-byte limit",
                "E2BIG",
                path,
            )
        if self._transport is None:
            raise XenstoreError("xenstore connection is closed")
        self._req_id = (self._req_id + 1) & 0xFFFFFFFF
        req_id = self._req_id
        try:
            self._transport.send(HEADER.pack(msg_type, req_id, 0, len(payload)) + payload)
            while True:
                rtype, rid, _tx, length = HEADER.unpack(self._transport.recv_exact(HEADER.size))
                if length > PAYLOAD_MAX:
                    raise self._broken(
                        f"xenstore reply of {length} bytes is over the {PAYLOAD_MAX}-byte limit"
                    )
                body = self._transport.recv_exact(length) if length else b""
                if rtype == XS_WATCH_EVENT:
                    continue  # we set no watches; skip stray events rather than mistake them for replies
                break
        except (OSError, XenstoreProtocolError) as exc:
            self.close()
            if isinstance(exc, XenstoreProtocolError):
                raise
            raise XenstoreError(f"xenstore I/O error: {exc}") from exc
        if rid != req_id:
            raise self._broken(f"xenstore reply for request {rid}, expected {req_id}")
        if rtype == XS_ERROR:
            name = body.rstrip(b"\0").decode("ascii", "replace") or "EIO"
            cls = XenstoreNotFound if name == "ENOENT" else XenstoreError
            raise cls(f"xenstore {path or ''}: {name}", name, path)
        if rtype != msg_type:
            raise self._broken(f"xenstore reply type {rtype} to a request of type {msg_type}")
        return body

    def read(self, path: str) -> bytes:
        """The raw value at ``path``; :class:`XenstoreNotFound` if absent."""
        return self.request(XS_READ, _encode_path(path) + b"\0", path)

    def read_optional(self, path: str) -> bytes | None:
        """The value at ``path`` or None if it does not exist."""
        try:
            return self.read(path)
        except XenstoreNotFound:
            return None

    def directory(self, path: str) -> list[str]:
        """The names of the children of ``path``."""
        body = self.request(XS_DIRECTORY, _encode_path(path) + b"\0", path)
        return [n.decode("utf-8", "replace") for n in body.split(b"\0") if n]

    def write(self, path: str, value: bytes | str) -> None:
        """Set ``path`` to ``value`` (guests may write under their own domain only)."""
        data = value.encode("utf-8") if isinstance(value, str) else value
        self.request(XS_WRITE, _encode_path(path) + b"\0" + data, path)


def _read_user_data(client: XenstoreClient) -> bytes | None:
    """``vm-data/user-data`` whole, or its numbered children joined in order."""
    try:
        children = client.directory(USER_DATA_KEY)
    except XenstoreNotFound:
        return None
    if children and all(c.isdigit() for c in children):
        return b"".join(client.read(f"{USER_DATA_KEY}/{c}") for c in sorted(children, key=int))
    value = client.read_optional(USER_DATA_KEY)
    return value or None


def fetch_xen_config(client: XenstoreClient) -> ConfigRef | None:
    """The config data from ``vm-data/user-data``, else the URL in ``vm-data/talos-config-url``."""
    data = _read_user_data(client)
    if data is not None:
        return ConfigRef(source=f"xenstore {USER_DATA_KEY}", data=data)
    url = client.read_optional(CONFIG_URL_KEY)
    if url is not None and url.strip(b"\0 \t\r\n"):
        return ConfigRef(source=f"xenstore {CONFIG_URL_KEY}", url=url.strip(b"\0 \t\r\n").decode("utf-8"))
    return None
