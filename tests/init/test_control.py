"""The init control socket: a real unix socket in tmp_path, wired to a real Supervisor."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from talos_os.init.control import ControlServer, dispatch, supervisor_handlers
from talos_os.init.supervisor import Restart, ServiceSpec, State, Supervisor
from talos_os.lib.control import call

T = 10.0
DAEMON = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor(log_dir=None)
    s.add(ServiceSpec("apid", DAEMON, restart=Restart.ALWAYS, stop_timeout=5))
    s.add(ServiceSpec("setup", [sys.executable, "-c", "pass"], restart=Restart.NEVER, oneshot=True))
    s.start()
    assert s.wait_for("apid", [State.RUNNING], T)
    assert s.wait_for("setup", [State.FINISHED], T)
    yield s
    s.shutdown(timeout=2)


@pytest.fixture
def actions() -> list[str]:
    return []


@pytest.fixture
def server(tmp_path: Path, sup: Supervisor, actions: list[str]) -> Iterator[ControlServer]:
    handlers = supervisor_handlers(
        sup, reboot=lambda: actions.append("reboot"), shutdown=lambda: actions.append("shutdown")
    )
    with ControlServer(tmp_path / "run/talos/init.sock", handlers, allowed_uids={os.getuid()}) as srv:
        yield srv


def raw_exchange(path: Path, *lines: bytes) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(T)
        s.connect(str(path))
        s.sendall(b"".join(lines))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_socket_file(server: ControlServer) -> None:
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(server.path.parent).st_mode) == 0o700


def test_ping_and_services(server: ControlServer, sup: Supervisor) -> None:
    assert call(server.path, "ping") == {"ok": True, "result": "pong"}
    resp = call(server.path, "services")
    assert resp["ok"] is True
    by_name = {s["name"]: s for s in resp["result"]}
    assert by_name["apid"]["state"] == "running" and by_name["apid"]["pid"] == sup.stats()["apid"]
    assert by_name["setup"]["state"] == "finished" and by_name["setup"]["exit_code"] == 0


def test_service_stop_start_restart(server: ControlServer, sup: Supervisor) -> None:
    assert call(server.path, "service_stop", name="apid") == {"ok": True, "result": {"stopped": True}}
    assert sup.info("apid").state == State.STOPPED
    assert call(server.path, "service_start", name="apid") == {"ok": True, "result": {"started": True}}
    assert sup.wait_for("apid", [State.RUNNING], T)
    pid = sup.stats()["apid"]
    assert call(server.path, "service_restart", name="apid") == {"ok": True, "result": {"restarted": True}}
    assert sup.wait_for("apid", [State.RUNNING], T)
    assert sup.stats()["apid"] != pid


def test_reboot_and_shutdown_are_requested(server: ControlServer, actions: list[str]) -> None:
    assert call(server.path, "reboot") == {"ok": True, "result": "rebooting"}
    assert call(server.path, "shutdown") == {"ok": True, "result": "shutting down"}
    assert actions == ["reboot", "shutdown"]


def test_errors(server: ControlServer) -> None:
    assert call(server.path, "service_stop", name="nope") == {
        "ok": False,
        "error": "no service named 'nope'",
        "code": "not_found",
    }
    missing = call(server.path, "service_start")
    assert missing["ok"] is False and "'name' is required" in missing["error"]
    unknown = call(server.path, "format_disk")
    assert unknown["ok"] is False and "unknown op 'format_disk'" in unknown["error"]


def test_several_requests_and_bad_lines_on_one_connection(server: ControlServer) -> None:
    replies = raw_exchange(
        server.path, b'{"op": "ping"}\n', b"\n", b"not json\n", b"[1, 2]\n", b'{"op": "ping"}\n'
    )
    assert replies[0] == {"ok": True, "result": "pong"}
    assert replies[1]["ok"] is False and "not JSON" in str(replies[1]["error"])
    assert replies[2]["ok"] is False and "expected an object" in str(replies[2]["error"])
    assert replies[3] == {"ok": True, "result": "pong"}
    assert len(replies) == 4


def test_oversized_request(server: ControlServer) -> None:
    replies = raw_exchange(server.path, b'{"op": "ping", "pad": "' + b"x" * 70000 + b'"}\n')
    assert len(replies) == 1 and "longer than" in str(replies[0]["error"])


def test_peer_uid_not_allowed(tmp_path: Path) -> None:
    with ControlServer(tmp_path / "c.sock", {}, allowed_uids={os.getuid() + 1}) as srv:
        resp = call(srv.path, "ping")
    assert resp == {"ok": False, "error": f"permission denied for uid {os.getuid()}", "code": "denied"}


def test_stale_socket_replaced_and_removed_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "init.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    srv = ControlServer(path, {}, allowed_uids={os.getuid()})
    srv.start()
    assert call(path, "ping")["ok"] is True
    # An idle client connection must not hold up stop().
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(str(path))
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 5
    idle.close()
    assert not path.exists()
    with pytest.raises(OSError):
        call(path, "ping", timeout=1)


def test_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "init.sock"
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        ControlServer(path, {}).start()
    assert path.read_text() == "not a socket"


def test_dispatch_handler_failure() -> None:
    def boom(_req: dict[str, object]) -> object:
        raise RuntimeError("disk on fire")

    resp = dispatch({"services": boom}, b'{"op": "services"}')
    assert resp == {"ok": False, "error": "services failed: RuntimeError: disk on fire", "code": "internal"}


def test_a_full_backlog_is_waited_out_not_failed(tmp_path: Path) -> None:
    """A listener that is slow to accept (backlog 1, first accept after 0.3 s): every caller gets through."""
    path = tmp_path / "slow.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    callers = 12

    def serve() -> None:
        time.sleep(0.3)
        for _ in range(callers):
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                reader.readline()
                conn.sendall(b'{"ok": true, "result": "pong"}\n')

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(lambda _: call(path, "ping", timeout=T), range(callers)))
    server.join(T)
    listener.close()
    assert results == [{"ok": True, "result": "pong"}] * callers


def test_many_callers_at_once(server: ControlServer) -> None:
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda _: call(server.path, "services", timeout=T), range(300)))
    assert all(r["ok"] for r in results) and len(results) == 300


def test_an_absent_socket_still_fails_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        call(tmp_path / "none.sock", timeout=T)
    assert time.monotonic() - start < 1
