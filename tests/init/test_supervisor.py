"""The supervisor with real, harmless processes (the test's own Python interpreter and sh)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from talos_os.init.supervisor import (
    ChildReaper,
    LogBuffer,
    Restart,
    ServiceSpec,
    State,
    Supervisor,
    WaitReaper,
    file_exists,
    run,
)

REPO = Path(__file__).resolve().parents[2]
T = 10.0  # generous timeout for every wait: tests finish far sooner unless something is broken


def py(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", textwrap.dedent(code)]


# A daemon that writes its name to ORDER when asked to stop, after saying it is ready.
DAEMON = """
import signal, sys, time
name, order = sys.argv[1], sys.argv[2]
def term(*_):
    with open(order, "a") as f:
        f.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def daemon(name: str, order: Path, **kw: Any) -> ServiceSpec:
    return ServiceSpec(name, [*py(DAEMON), name, str(order)], restart=Restart.ALWAYS, stop_timeout=5, **kw)


def wait_ready(sup: Supervisor, name: str) -> None:
    """Wait until the service printed "ready" (its signal handler is installed)."""
    buf = sup.logs(name)
    cursor = 0
    deadline = time.monotonic() + T
    while True:
        lines, cursor = buf.read_since(cursor)
        if "ready" in lines:
            return
        assert time.monotonic() < deadline, f"{name} never became ready: {sup.info(name)}"
        buf.wait_for_more(cursor, 1.0)


def wait_lines(buf: LogBuffer, n: int) -> None:
    """Wait until ``n`` lines have been captured in total."""
    while buf.cursor < n:
        assert buf.wait_for_more(buf.cursor, T), f"only {buf.cursor} of {n} lines arrived"


@pytest.fixture
def counter() -> Callable[[], float]:
    """A clock that ticks once per event: gives a strict total order of all state changes."""
    c = itertools.count(1)
    return lambda: float(next(c))


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor(log_dir=tmp_path / "log")
    yield s
    s.shutdown(timeout=2)


def event_time(s: Supervisor, name: str, state: State) -> float:
    return next(e.time for e in s.events(name) if e.state == state)


def test_one_shot_finishes_with_history(sup: Supervisor, tmp_path: Path) -> None:
    t0 = time.time()
    sup.add(ServiceSpec("hello", py("print('hello'); print('world')"), restart=Restart.NEVER))
    sup.start()
    assert sup.wait_for("hello", [State.FINISHED], T)
    t1 = time.time()
    info = sup.info("hello")
    assert info.exit_code == 0 and info.pid is None and info.message == "exited with code 0"
    events = sup.events("hello")
    assert [e.state for e in events] == [
        State.STOPPED,  # registered
        State.WAITING,
        State.PREPARING,
        State.RUNNING,
        State.FINISHED,
    ]
    times = [e.time for e in events]
    assert times == sorted(times) and t0 <= times[0] and times[-1] <= t1
    assert "started (pid" in events[3].message
    wait_lines(sup.logs("hello"), 2)
    assert sup.logs("hello").lines() == ["hello", "world"]
    assert (tmp_path / "log/hello.log").read_text() == "hello\nworld\n"
    assert sup.services()[0].as_dict()["state"] == "finished"


def test_dependency_ordering(tmp_path: Path, counter: Callable[[], float]) -> None:
    s = Supervisor(log_dir=None, clock=counter)
    order = tmp_path / "order"
    # Registered in reverse: the order must come from the dependencies, not from registration.
    s.add(daemon("c", order, depends=["b"]))
    s.add(daemon("b", order, depends=["a"]))
    s.add(ServiceSpec("a", py("import time; time.sleep(0.1)"), restart=Restart.NEVER, oneshot=True))
    try:
        s.start()
        assert s.wait_for("c", [State.RUNNING], T)
        assert event_time(s, "a", State.FINISHED) < event_time(s, "b", State.PREPARING)
        assert event_time(s, "b", State.RUNNING) < event_time(s, "c", State.PREPARING)
        assert any(e.message == "waiting for service b" for e in s.events("c"))
        assert s.order() == ["a", "b", "c"]
    finally:
        s.shutdown(timeout=2)


def test_failed_dependency_fails_dependents(sup: Supervisor) -> None:
    sup.add(ServiceSpec("bad", py("raise SystemExit(2)"), restart=Restart.NEVER, oneshot=True))
    sup.add(ServiceSpec("after", py("pass"), depends=["bad"]))
    sup.start()
    assert sup.wait_for("after", [State.FAILED], T)
    assert sup.info("bad").message == "exited with code 2"
    assert sup.info("after").message == "dependency bad failed"


def test_restart_with_backoff_then_failed(sup: Supervisor) -> None:
    sup.add(
        ServiceSpec(
            "flaky",
            py("print('run'); raise SystemExit(1)"),
            restart=Restart.ON_FAILURE,
            max_restarts=3,
            backoff_base=0.01,
            backoff_jitter=0.0,
        )
    )
    sup.start()
    assert sup.wait_for("flaky", [State.FAILED], T)
    info = sup.info("flaky")
    assert info.restarts == 3 and info.exit_code == 1
    assert info.message == "exited with code 1; giving up after 3 restarts"
    waits = [e.message for e in sup.events("flaky") if e.state == State.WAITING and "restart" in e.message]
    assert waits == [
        "exited with code 1; restart 1 in 0.01s",
        "exited with code 1; restart 2 in 0.02s",
        "exited with code 1; restart 3 in 0.04s",
    ]
    wait_lines(sup.logs("flaky"), 4)
    assert sup.logs("flaky").lines() == ["run"] * 4


def test_on_failure_until_success(sup: Supervisor, tmp_path: Path) -> None:
    count = tmp_path / "count"
    code = f"""
    import pathlib, sys
    p = pathlib.Path({str(count)!r})
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    sys.exit(0 if n >= 3 else 7)
    """
    sup.add(ServiceSpec("retry", py(code), backoff_base=0.01))
    sup.start()
    assert sup.wait_for("retry", [State.FINISHED], T)
    assert sup.info("retry").restarts == 2
    assert count.read_text() == "3"


def test_start_failure(sup: Supervisor, tmp_path: Path) -> None:
    sup.add(ServiceSpec("ghost", [str(tmp_path / "no-such-binary")], restart=Restart.NEVER))
    sup.start()
    assert sup.wait_for("ghost", [State.FAILED], T)
    assert sup.info("ghost").message.startswith("start failed: [Errno 2]")


def test_start_condition(sup: Supervisor, tmp_path: Path) -> None:
    flag = tmp_path / "network-up"
    sup.add(
        ServiceSpec("gated", py("print('go')"), restart=Restart.NEVER, conditions=[file_exists(flag, 0.02)])
    )
    sup.start()
    want = f"waiting for file {flag} exists"
    assert sup.wait_until(lambda: sup.info("gated").message == want, T)
    assert sup.info("gated").state == State.WAITING
    flag.touch()
    assert sup.wait_for("gated", [State.FINISHED], T)


def test_logs_ring_and_rotated_file(sup: Supervisor, tmp_path: Path) -> None:
    code = "for i in range(200): print(f'line {i:04d} ' + 'x' * 40)"
    sup.add(
        ServiceSpec(
            "chatty", py(code), restart=Restart.NEVER, log_lines=50, log_file_bytes=2000, log_backups=2
        )
    )
    sup.start()
    assert sup.wait_for("chatty", [State.FINISHED], T)
    buf = sup.logs("chatty")
    wait_lines(buf, 200)
    ring = buf.lines()
    assert len(ring) == 50 and ring[0].startswith("line 0150") and ring[-1].startswith("line 0199")
    log = tmp_path / "log"
    files = [log / "chatty.log.2", log / "chatty.log.1", log / "chatty.log"]
    assert all(f.exists() and f.stat().st_size <= 2000 for f in files)
    assert not (log / "chatty.log.3").exists()
    kept = "".join(f.read_text() for f in files).splitlines()
    numbers = [int(line.split()[1]) for line in kept]
    assert numbers == list(range(numbers[0], 200))  # contiguous, newest last
    assert len(numbers) > 50


def test_follow_cursor(sup: Supervisor, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = f"""
    print('one')
    with open({str(fifo)!r}) as f:
        print(f.readline().strip())
    """
    sup.add(ServiceSpec("follow", py(code), restart=Restart.NEVER))
    buf = sup.logs("follow")
    cursor = buf.cursor
    assert cursor == 0
    sup.start()
    assert buf.wait_for_more(cursor, T)
    lines, cursor = buf.read_since(cursor)
    assert (lines, cursor) == (["one"], 1)
    assert not buf.wait_for_more(cursor, 0.01)  # nothing new yet
    with open(fifo, "w") as f:
        f.write("two\n")
    assert buf.wait_for_more(cursor, T)
    assert buf.read_since(cursor) == (["two"], 2)
    assert buf.read_since(0) == (["one", "two"], 2)


def test_orderly_shutdown_order_and_hooks(tmp_path: Path) -> None:
    s = Supervisor(log_dir=None)
    order = tmp_path / "order"
    s.add(daemon("a", order))
    s.add(daemon("b", order, depends=["a"]))
    s.add(daemon("c", order, depends=["b"]))
    s.start()
    for name in "abc":
        assert s.wait_for(name, [State.RUNNING], T)
        wait_ready(s, name)
    assert s.stop_waves() == [["c"], ["b"], ["a"]]
    called: list[str] = []

    def unmount() -> None:
        called.append("unmount")
        raise OSError("busy")

    errors = s.shutdown(
        timeout=5, hooks=[lambda: called.append("sync"), unmount, lambda: called.append("reboot")]
    )
    assert order.read_text().split() == ["c", "b", "a"]
    assert called == ["sync", "unmount", "reboot"]  # a failing hook does not stop the reboot
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    assert {i.state for i in s.services()} == {State.STOPPED}
    assert all(i.pid is None for i in s.services())
    with pytest.raises(RuntimeError):
        s.start_service("a")


def test_sigkill_after_grace(sup: Supervisor) -> None:
    code = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print('ready')
    time.sleep(60)
    """
    sup.add(ServiceSpec("stubborn", py(code), restart=Restart.ALWAYS))
    sup.start()
    wait_ready(sup, "stubborn")
    started = time.monotonic()
    assert sup.stop_service("stubborn", timeout=0.2)
    assert time.monotonic() - started < 5
    info = sup.info("stubborn")
    assert info.state == State.STOPPED and info.message == "stopped (killed by SIGKILL)"
    messages = [e.message for e in sup.events("stubborn")]
    assert "sending SIGTERM" in messages and "did not stop in time: sending SIGKILL" in messages


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie waiting for its (new) parent


def test_stop_kills_the_process_group(sup: Supervisor, tmp_path: Path) -> None:
    code = """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    print(child.pid)
    time.sleep(60)
    """
    sup.add(ServiceSpec("parent", py(code), restart=Restart.ALWAYS, stop_timeout=5))
    sup.start()
    buf = sup.logs("parent")
    assert buf.wait_for_more(0, T)
    grandchild = int(buf.lines()[0])
    pid = sup.stats()["parent"]
    assert pid is not None and not _gone(pid) and not _gone(grandchild)
    assert sup.stop_service("parent")
    assert sup.stats()["parent"] is None
    deadline = time.monotonic() + T
    while not _gone(grandchild):
        assert time.monotonic() < deadline, "the grandchild survived the stop"
        time.sleep(0.01)


def test_manual_stop_start_restart(sup: Supervisor, tmp_path: Path) -> None:
    sup.add(daemon("d", tmp_path / "order"))
    sup.start()
    assert sup.wait_for("d", [State.RUNNING], T)
    first = sup.stats()["d"]
    assert sup.start_service("d") is False  # already active
    assert sup.stop_service("d")
    assert sup.info("d").state == State.STOPPED
    assert sup.start_service("d") is True
    assert sup.wait_for("d", [State.RUNNING], T)
    second = sup.stats()["d"]
    assert sup.restart_service("d")
    assert sup.wait_for("d", [State.RUNNING], T)
    third = sup.stats()["d"]
    assert len({first, second, third}) == 3
    with pytest.raises(KeyError, match="no service named 'nope'"):
        sup.stop_service("nope")


def test_always_restarts_and_stop_during_backoff(sup: Supervisor) -> None:
    sup.add(ServiceSpec("loop", py("pass"), restart=Restart.ALWAYS, backoff_base=0.01, backoff_cap=0.02))
    sup.start()
    assert sup.wait_until(lambda: sup.info("loop").restarts >= 3, T)
    sup.add(ServiceSpec("slow", py("pass"), restart=Restart.ALWAYS, backoff_base=30, backoff_jitter=0))
    sup.start_service("slow")
    assert sup.wait_until(lambda: "restart 1 in 30.00s" in sup.info("slow").message, T)
    started = time.monotonic()
    assert sup.stop_service("slow")
    assert time.monotonic() - started < 5
    assert sup.info("slow").message == "stopped during restart backoff"


def test_validation(sup: Supervisor) -> None:
    sup.add(ServiceSpec("x", ["true"], depends=["y"]))
    with pytest.raises(ValueError, match="already registered"):
        sup.add(ServiceSpec("x", ["true"]))
    with pytest.raises(ValueError, match="invalid service name"):
        sup.add(ServiceSpec("../evil", ["true"]))
    with pytest.raises(ValueError, match="x depends on unknown service y"):
        sup.start()
    sup.add(ServiceSpec("y", ["true"], depends=["z"]))
    sup.add(ServiceSpec("z", ["true"], depends=["x"]))
    with pytest.raises(ValueError, match="dependency cycle: x -> y -> z -> x"):
        sup.order()


def test_stop_waves_diamond() -> None:
    s = Supervisor(log_dir=None)
    s.add(ServiceSpec("base", ["true"]))
    s.add(ServiceSpec("left", ["true"], depends=["base"]))
    s.add(ServiceSpec("right", ["true"], depends=["base"]))
    s.add(ServiceSpec("top", ["true"], depends=["left", "right"]))
    s.add(ServiceSpec("lone", ["true"]))
    assert s.stop_waves() == [["top", "lone"], ["left", "right"], ["base"]]
    assert s.reap_children() == []  # not PID 1: nothing reaped behind anyone's back


def test_history_is_bounded(tmp_path: Path) -> None:
    s = Supervisor(log_dir=None, history=5)
    s.add(ServiceSpec("f", py("raise SystemExit(1)"), max_restarts=5, backoff_base=0.001))
    s.start()
    try:
        assert s.wait_for("f", [State.FAILED], T)
        events = s.events("f")
        assert len(events) == 5 and events[-1].state == State.FAILED
    finally:
        s.shutdown(timeout=2)


# --- LogBuffer on its own ---------------------------------------------------------------------


def test_log_buffer_bounds_and_cursor() -> None:
    buf = LogBuffer(max_lines=3, max_bytes=10_000)
    for i in range(5):
        buf.append(f"l{i}")
    assert buf.lines() == ["l2", "l3", "l4"]
    assert buf.read_since(0) == (["l2", "l3", "l4"], 5)  # evicted lines are skipped
    assert buf.read_since(4) == (["l4"], 5)
    assert buf.read_since(99) == ([], 5)
    small = LogBuffer(max_lines=100, max_bytes=10)
    for word in ("aaaa", "bbbb", "cccc"):
        small.append(word)
    assert small.lines() == ["bbbb", "cccc"]
    small.append("x" * 50)  # a single line over the byte bound is still kept
    assert small.lines() == ["x" * 50]


def test_log_buffer_wait_wakes_on_append_and_close() -> None:
    buf = LogBuffer()
    ready = threading.Event()
    results: list[bool] = []

    def follower() -> None:
        ready.set()
        results.append(buf.wait_for_more(0, T))

    t = threading.Thread(target=follower)
    t.start()
    ready.wait(T)
    buf.append("x")
    t.join(T)
    assert results == [True]
    t2 = threading.Thread(target=lambda: results.append(buf.wait_for_more(1, T)))
    t2.start()
    buf.close()
    t2.join(T)
    assert results == [True, False]


def test_log_buffer_file_errors_keep_the_ring(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    buf = LogBuffer(path=blocker / "sub" / "svc.log")
    buf.append("still here")
    assert buf.lines() == ["still here"]
    assert buf.file_error is not None


def test_log_buffer_rotation_without_backups(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    buf = LogBuffer(path=path, file_max_bytes=10, backups=0)
    for word in ("aaaa", "bbbb", "cccc"):
        buf.append(word)
    buf.close()
    assert path.read_text() == "cccc\n"
    assert list(tmp_path.iterdir()) == [path]


# --- PID 1 reaping ----------------------------------------------------------------------------


def test_child_reaper_dispatch_with_fake_waitpid() -> None:
    statuses = [(101, 3 << 8), (202, 9), (303, 0), (0, 0)]
    orphans: list[tuple[int, int]] = []

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        assert (pid, options) == (-1, os.WNOHANG)
        return statuses.pop(0)

    reaper = ChildReaper(on_orphan=lambda p, c: orphans.append((p, c)), waitpid=waitpid)

    class FakeProc:
        def __init__(self, pid: int) -> None:
            self.pid = pid
            self.returncode: int | None = None

    tracked = [cast("subprocess.Popen[bytes]", FakeProc(pid)) for pid in (101, 303)]
    for proc in tracked:
        reaper.spawn(lambda proc=proc: proc)  # type: ignore[misc]
    assert reaper.reap_children() == [(101, 3), (202, -9), (303, 0)]
    assert orphans == [(202, -9)]
    assert reaper.wait(tracked[0]) == 3 and tracked[0].returncode == 3
    assert reaper.wait(tracked[1]) == 0


SUBREAPER_SCRIPT = """
import json, signal, sys, threading
from talos_os.init.supervisor import (
    ChildReaper, Restart, ServiceSpec, State, Supervisor, run, set_child_subreaper,
)

set_child_subreaper()  # this process now inherits orphans, as PID 1 does
orphaned = threading.Event()
orphans = []

def on_orphan(pid, code):
    orphans.append((pid, code))
    orphaned.set()

reaper = ChildReaper(on_orphan=on_orphan, poll_interval=30.0)  # no polling: waitid wakes it
sup = Supervisor(reaper=reaper, log_dir=None)
# sh leaves a background child behind and exits 3 at once: the child becomes our orphan.
sup.add(ServiceSpec("leaver", ["sh", "-c", "sleep 0.2 & echo $!; exit 3"], restart=Restart.NEVER))
sup.add(ServiceSpec("quick", ["true"], restart=Restart.NEVER))
sup.add(ServiceSpec("daemon", ["sleep", "60"], restart=Restart.ALWAYS))
sup.start()
ok = all([
    sup.wait_for("leaver", [State.FAILED], 10),
    sup.wait_for("quick", [State.FINISHED], 10),
    sup.wait_for("daemon", [State.RUNNING], 10),
    orphaned.wait(10),
])
sup.logs("leaver").wait_for_more(0, 10)
orphan_pid = int(sup.logs("leaver").lines()[0])
tool = run(reaper, ["sh", "-c", "cat; echo err >&2; exit 4"], input=b"in")
stopped = sup.stop_service("daemon", timeout=5)
errors = sup.shutdown(timeout=5)
try:
    import os
    left = os.waitpid(-1, os.WNOHANG)
except ChildProcessError:
    left = None
print(json.dumps({
    "ok": ok,
    "leaver": sup.info("leaver").exit_code,
    "quick": sup.info("quick").exit_code,
    "daemon": [str(sup.info("daemon").state), sup.info("daemon").exit_code, stopped],
    "orphans": orphans,
    "orphan_pid": orphan_pid,
    "left": left,
    "tool": [tool.returncode, tool.stdout.decode(), tool.stderr.decode()],
    "errors": [str(e) for e in errors],
}))
"""


def test_child_reaper_as_subreaper() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", SUBREAPER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] is True
    assert result["leaver"] == 3 and result["quick"] == 0
    assert result["daemon"] == ["stopped", -15, True]
    assert result["orphans"] == [[result["orphan_pid"], 0]]
    assert result["left"] is None  # no zombie left behind
    assert result["errors"] == []
    assert result["tool"] == [4, "in", "err\n"]


def test_run_tool_with_wait_reaper() -> None:
    out = run(WaitReaper(), ["sh", "-c", "echo hi; echo oops >&2; exit 5"])
    assert (out.returncode, out.stdout, out.stderr) == (5, b"hi\n", b"oops\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run(WaitReaper(), ["sleep", "30"], timeout=0.1)
