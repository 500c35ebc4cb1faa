"""The xenstore client against a server speaking the real wire format over a unix socket."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from platforms.xen.xenstore import (
    HEADER,
    XS_DIRECTORY,
    XS_ERROR,
    XS_READ,
    XS_WATCH_EVENT,
    XS_WRITE,
    DeviceTransport,
    XenstoreClient,
    XenstoreError,
    XenstoreNotFound,
    XenstoreProtocolError,
    XenstoreTooLarge,
    fetch_xen_config,
)

DOMID = 7


class WireServer:
    """A tiny xenstored: READ/DIRECTORY/WRITE on an in-memory tree, relative paths under domain 7.

    ``misbehave`` makes the next reply broken: "oversize" (len > 4096), "req_id" (wrong id),
    "watch" (a WATCH_EVENT first, then the real reply).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree: dict[str, bytes] = {}
        self.denied: set[str] = set()
        self.received: list[tuple[int, int, bytes]] = []  # (type, req_id, payload)
        self.misbehave: str | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(5)

    def resolve(self, path: str) -> str:
        return path if path.startswith("/") else f"/local/domain/{DOMID}/{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                mtype, req_id, tx_id, length = HEADER.unpack(self._recv(conn, HEADER.size))
                payload = self._recv(conn, length)
                self.received.append((mtype, req_id, payload))
                rtype, body = self.answer(mtype, payload)
                bad, self.misbehave = self.misbehave, None
                if bad == "oversize":
                    conn.sendall(HEADER.pack(rtype, req_id, tx_id, 5000))
                    continue
                if bad == "req_id":
                    req_id += 1
                if bad == "watch":
                    event = b"some/path\0token\0"
                    conn.sendall(HEADER.pack(XS_WATCH_EVENT, 0, 0, len(event)) + event)
                conn.sendall(HEADER.pack(rtype, req_id, tx_id, len(body)) + body)
        except (EOFError, OSError):
            pass

    def answer(self, mtype: int, payload: bytes) -> tuple[int, bytes]:
        if mtype in (XS_READ, XS_DIRECTORY):
            path = self.resolve(payload.rstrip(b"\0").decode())
            if path in self.denied:
                return XS_ERROR, b"EACCES\0"
            if mtype == XS_READ:
                if path not in self.tree:
                    return XS_ERROR, b"ENOENT\0"
                return XS_READ, self.tree[path]
            prefix = path.rstrip("/") + "/"
            children = sorted({k[len(prefix) :].split("/")[0] for k in self.tree if k.startswith(prefix)})
            if not children and path not in self.tree:
                return XS_ERROR, b"ENOENT\0"
            return XS_DIRECTORY, b"".join(c.encode() + b"\0" for c in children)
        if mtype == XS_WRITE:
            raw_path, _, value = payload.partition(b"\0")
            self.tree[self.resolve(raw_path.decode())] = value
            return XS_WRITE, b"OK\0"
        return XS_ERROR, b"EINVAL\0"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WireServer]:
    srv = WireServer(tmp_path / "xenstored.sock")
    yield srv
    srv.close()


@pytest.fixture
def client(server: WireServer) -> Iterator[XenstoreClient]:
    with XenstoreClient.open_socket(str(server.path), timeout=5.0) as c:
        yield c


def test_read_relative_and_absolute(server: WireServer, client: XenstoreClient) -> None:
    server.tree["/local/domain/7/name"] = b"node-1"
    server.tree["/vm/abc/uuid"] = b"abc"
    assert client.read("name") == b"node-1"
    assert client.read("/local/domain/7/name") == b"node-1"
    assert client.read("/vm/abc/uuid") == b"abc"
    # Relative paths go on the wire as they are: xenstored resolves them.
    assert server.received[0] == (XS_READ, 1, b"name\0")
    assert [r[1] for r in server.received] == [1, 2, 3]


def test_directory(server: WireServer, client: XenstoreClient) -> None:
    for key in ("a", "b/c", "b/d"):
        server.tree[f"/local/domain/7/vm-data/{key}"] = b"x"
    assert client.directory("vm-data") == ["a", "b"]
    assert client.directory("vm-data/b") == ["c", "d"]
    assert client.directory("vm-data/a") == []


def test_enoent_and_other_errors(server: WireServer, client: XenstoreClient) -> None:
    with pytest.raises(XenstoreNotFound) as info:
        client.read("vm-data/missing")
    assert info.value.errno_name == "ENOENT" and info.value.path == "vm-data/missing"
    assert client.read_optional("vm-data/missing") is None
    server.tree["/local/domain/0/secret"] = b"s"
    server.denied.add("/local/domain/0/secret")
    with pytest.raises(XenstoreError) as err:
        client.read("/local/domain/0/secret")
    assert err.value.errno_name == "EACCES" and not isinstance(err.value, XenstoreNotFound)
    assert client.read_optional("vm-data/missing") is None  # the connection is still usable


def test_write_then_read(server: WireServer, client: XenstoreClient) -> None:
    client.write("data/talos-status", "configured")
    assert server.tree["/local/domain/7/data/talos-status"] == b"configured"
    assert server.received[-1] == (XS_WRITE, 1, b"data/talos-status\0configured")
    assert client.read("data/talos-status") == b"configured"


def test_oversized_reply_is_a_protocol_error(server: WireServer, client: XenstoreClient) -> None:
    server.tree["/local/domain/7/k"] = b"v"
    server.misbehave = "oversize"
    with pytest.raises(XenstoreProtocolError, match="5000 bytes is over the 4096-byte limit"):
        client.read("k")
    with pytest.raises(XenstoreError, match="closed"):
        client.read("k")


def test_oversized_request_is_refused_before_sending(server: WireServer, client: XenstoreClient) -> None:
    with pytest.raises(XenstoreTooLarge) as info:
        client.write("data/big", b"x" * 4096)
    assert info.value.errno_name == "E2BIG"
    assert server.received == []
    client.write("data/ok", b"x" * (4096 - len("data/ok\0")))  # exactly at the limit
    assert len(server.received[0][2]) == 4096


def test_req_id_mismatch(server: WireServer, client: XenstoreClient) -> None:
    server.tree["/local/domain/7/k"] = b"v"
    server.misbehave = "req_id"
    with pytest.raises(XenstoreProtocolError, match="reply for request 2, expected 1"):
        client.read("k")
    with pytest.raises(XenstoreError, match="closed"):
        client.read("k")


def test_stray_watch_event_is_skipped(server: WireServer, client: XenstoreClient) -> None:
    server.tree["/local/domain/7/k"] = b"v"
    server.misbehave = "watch"
    assert client.read("k") == b"v"


def test_server_going_away(server: WireServer, client: XenstoreClient) -> None:
    server.close()
    with pytest.raises(XenstoreError):
        client.read("k")


def test_bad_paths() -> None:
    c = XenstoreClient(RecordingTransport([]))
    for bad in ("", "a\0b"):
        with pytest.raises(ValueError):
            c.read(bad)


class RecordingTransport:
    """Records each send() and answers from a queue of prepared replies."""

    def __init__(self, replies: list[bytes]) -> None:
        self.sent: list[bytes] = []
        self.buf = b"".join(replies)

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def recv_exact(self, n: int) -> bytes:
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def close(self) -> None:
        pass


def test_one_write_per_message_native_endian() -> None:
    reply = HEADER.pack(XS_READ, 1, 0, 5) + b"hello"
    t = RecordingTransport([reply])
    assert XenstoreClient(t).read("vm-data/x") == b"hello"
    assert len(t.sent) == 1
    assert t.sent[0] == struct.pack("=IIII", XS_READ, 1, 0, 10) + b"vm-data/x\0"


def test_device_transport_mechanics(tmp_path: Path) -> None:
    # A FIFO opened read-write echoes our own request back: enough to exercise the device path
    # (single write, poll, read) without /dev/xen/xenbus. The "reply" is the request itself.
    fifo = tmp_path / "xenbus"
    os.mkfifo(fifo)
    with XenstoreClient.open_device([str(tmp_path / "absent"), str(fifo)], timeout=1.0) as c:
        assert c.read("name") == b"name\0"
    t = DeviceTransport(str(fifo), timeout=0.05)
    try:
        with pytest.raises(TimeoutError):
            t.recv_exact(16)
    finally:
        t.close()


def test_no_device() -> None:
    with pytest.raises(XenstoreError, match=r"no xenbus device: /nonexistent/a: .*; /nonexistent/b"):
        XenstoreClient.open_device(["/nonexistent/a", "/nonexistent/b"])


# --- the guest half: fetch_xen_config ---------------------------------------------------------


def test_config_from_user_data(server: WireServer, client: XenstoreClient) -> None:
    server.tree["/local/domain/7/vm-data/user-data"] = b"machine: {}\n"
    server.tree["/local/domain/7/vm-data/talos-config-url"] = b"http://127.0.0.1/ignored"
    ref = fetch_xen_config(client)
    assert ref is not None and ref.data == b"machine: {}\n" and ref.url is None
    assert "vm-data/user-data" in ref.source


def test_config_from_chunks(server: WireServer, client: XenstoreClient) -> None:
    for i, part in enumerate([b"aa", b"bb", b"cc", b"dd", b"ee", b"ff", b"gg", b"hh", b"ii", b"jj", b"kk"]):
        server.tree[f"/local/domain/7/vm-data/user-data/{i}"] = part
    ref = fetch_xen_config(client)
    assert ref is not None and ref.data == b"aabbccddeeffgghhiijjkk"  # numeric order: 10 after 9


def test_config_url(server: WireServer, client: XenstoreClient) -> None:
    server.tree["/local/domain/7/vm-data/talos-config-url"] = b"http://127.0.0.1:8080/n1.yaml\n"
    ref = fetch_xen_config(client)
    assert ref is not None and ref.url == "http://127.0.0.1:8080/n1.yaml" and ref.data is None


def test_no_config(server: WireServer, client: XenstoreClient) -> None:
    server.tree["/local/domain/7/vm-data/other"] = b"x"
    assert fetch_xen_config(client) is None
    server.tree["/local/domain/7/vm-data/user-data"] = b""
    assert fetch_xen_config(client) is None
