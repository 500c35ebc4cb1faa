"""The control socket's ops for osd (logs, stats, reset) on a real socket and a real Supervisor."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from talos_os.init.control import MAX_WAIT, ControlServer, read_logs, supervisor_handlers
from talos_os.init.supervisor import LogBuffer, Restart, ServiceSpec, State, Supervisor
from talos_os.lib.control import call

T = 10.0


@pytest.fixture
def trigger(tmp_path: Path) -> Path:
    path = tmp_path / "trigger"
    path.write_text("0")
    return path


@pytest.fixture
def sup(trigger: Path, ticker: Callable[[Path], list[str]]) -> Iterator[Supervisor]:
    s = Supervisor(log_dir=None)
    s.add(ServiceSpec("echoer", ticker(trigger), restart=Restart.ALWAYS))
    s.add(ServiceSpec("sleeper", ["sleep", "60"], restart=Restart.ALWAYS, stop_timeout=5))
    s.start()
    assert s.wait_for("echoer", [State.RUNNING], T) and s.wait_for("sleeper", [State.RUNNING], T)
    assert s.logs("echoer").wait_for_more(0, T)  # "ticker ready"
    yield s
    s.shutdown(timeout=2)


@pytest.fixture
def actions() -> list[str]:
    return []


@pytest.fixture
def sock(tmp_path: Path, sup: Supervisor, actions: list[str]) -> Iterator[Path]:
    handlers = supervisor_handlers(
        sup,
        reboot=lambda: actions.append("reboot"),
        shutdown=lambda: actions.append("shutdown"),
        reset=lambda: actions.append("reset"),
    )
    with ControlServer(tmp_path / "init.sock", handlers, allowed_uids={os.getuid()}) as srv:
        yield srv.path


def emit(trigger: Path, total: int) -> None:
    trigger.write_text(str(total))


def wait_lines(buf: LogBuffer, count: int) -> None:
    """Block until the buffer has ``count`` lines (each append wakes the wait)."""
    deadline = time.monotonic() + T
    while buf.cursor < count:
        assert time.monotonic() < deadline, f"only {buf.cursor} of {count} lines"
        buf.wait_for_more(buf.cursor, 0.5)


def test_reset_is_requested(sock: Path, actions: list[str]) -> None:
    assert call(sock, "reset") == {"ok": True, "result": "resetting"}
    assert actions == ["reset"]


def test_reset_without_a_handler_is_refused(tmp_path: Path, sup: Supervisor) -> None:
    handlers = supervisor_handlers(sup, reboot=lambda: None, shutdown=lambda: None)
    with ControlServer(tmp_path / "c.sock", handlers, allowed_uids={os.getuid()}) as srv:
        assert call(srv.path, "reset") == {
            "ok": False,
            "error": "reset is not available on this node",
            "code": "failed_precondition",
        }


def test_stats(sock: Path, sup: Supervisor) -> None:
    resp = call(sock, "stats")
    assert resp["ok"] is True
    stats = resp["result"]
    assert set(stats) == {"echoer", "sleeper"}
    sleeper = stats["sleeper"]
    assert sleeper["pid"] == sup.stats()["sleeper"]
    # No cgroup root here: the main process's figures from /proc.
    assert sleeper["source"] == "proc" and sleeper["memory_bytes"] > 0 and sleeper["cpu_usec"] >= 0


def test_logs_all_tail_and_cursor(sock: Path, trigger: Path, sup: Supervisor) -> None:
    emit(trigger, 5)
    wait_lines(sup.logs("echoer"), 6)
    page = call(sock, "logs", name="echoer")["result"]
    assert page["lines"] == ["ticker ready", "tick 1", "tick 2", "tick 3", "tick 4", "tick 5"]
    assert page["cursor"] == page["end"] == 6 and page["missed"] == 0 and page["closed"] is False
    tail = call(sock, "logs", name="echoer", tail=2)["result"]
    assert tail["lines"] == ["tick 4", "tick 5"] and tail["cursor"] == 6
    assert call(sock, "logs", name="echoer", tail=0)["result"]["lines"] == []
    after = call(sock, "logs", name="echoer", cursor=4)["result"]
    assert after["lines"] == ["tick 4", "tick 5"]


def test_logs_long_poll_returns_when_a_line_arrives(sock: Path, trigger: Path, sup: Supervisor) -> None:
    cursor = sup.logs("echoer").cursor
    threading.Timer(0.3, emit, args=(trigger, 1)).start()
    page = call(sock, "logs", name="echoer", cursor=cursor, wait=MAX_WAIT)["result"]
    assert page["lines"] == ["tick 1"] and page["cursor"] == cursor + 1


def test_logs_long_poll_times_out_empty(sock: Path, sup: Supervisor) -> None:
    cursor = sup.logs("echoer").cursor
    page = call(sock, "logs", name="echoer", cursor=cursor, wait=0.2)["result"]
    assert page["lines"] == [] and page["cursor"] == cursor


def test_logs_pages_by_size_and_reports_missed_lines() -> None:
    buf = LogBuffer(max_lines=10)
    for i in range(25):
        buf.append(f"{i:02d}" + "x" * 98)
    first = read_logs(buf, {"op": "logs", "cursor": 0, "max_bytes": 350})
    # Lines 0-14 were evicted from the ring before anyone read them.
    assert first["missed"] == 15
    assert [line[:2] for line in first["lines"]] == ["15", "16", "17"]
    nxt = read_logs(buf, {"op": "logs", "cursor": first["cursor"], "max_bytes": 350})
    assert [line[:2] for line in nxt["lines"]] == ["18", "19", "20"] and nxt["missed"] == 0
    # A single line larger than max_bytes still goes out (alone), so a follower never stalls.
    huge = read_logs(buf, {"op": "logs", "cursor": 20, "max_bytes": 10})
    assert len(huge["lines"]) == 1 and huge["cursor"] == 21


def test_logs_of_a_closed_buffer_do_not_wait() -> None:
    buf = LogBuffer()
    buf.append("last words")
    buf.close()
    start = time.monotonic()
    page = read_logs(buf, {"op": "logs", "cursor": 1, "wait": 5})
    assert page == {"lines": [], "cursor": 1, "end": 1, "missed": 0, "closed": True}
    assert time.monotonic() - start < 5


def test_logs_errors(sock: Path) -> None:
    assert call(sock, "logs", name="nope") == {
        "ok": False,
        "error": "no service named 'nope'",
        "code": "not_found",
    }
    assert "'name' is required" in call(sock, "logs")["error"]
    assert "non-negative integer" in call(sock, "logs", name="echoer", tail=-1)["error"]
    assert "non-negative integer" in call(sock, "logs", name="echoer", cursor="3")["error"]
    assert "'wait' must be" in call(sock, "logs", name="echoer", wait="soon")["error"]
