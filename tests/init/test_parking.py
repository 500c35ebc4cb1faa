"""Parked services (talos_os.init.supervisor.parking): launched early, handed over at their start.

Real processes under a real supervisor; the parked program reports its pid and environment so the
test sees which process the supervisor ended up running.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from talos_os.init.supervisor import ProcessRunner, Restart, ServiceSpec, State, Supervisor, WaitReaper
from talos_os.init.supervisor.parking import ParkingRunner
from talos_os.lib.parked import PARKED_ENV, parked, wait_for_go

REPO = Path(__file__).resolve().parents[2]
T = 10.0

# Says who it is, waits for its go when parked (EOF: exits 0), then runs until told to exit.
PROGRAM = """
import os, sys, time
print(f"pid {os.getpid()} parked={os.environ.get('TALOS_PARKED', '0')}", flush=True)
if os.environ.get("TALOS_PARKED") == "1":
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    print(f"got {line.strip()}", flush=True)
time.sleep(float(sys.argv[1]))
"""


def spec(run_for: float = 30.0, **kw: object) -> ServiceSpec:
    argv = [sys.executable, "-u", "-c", textwrap.dedent(PROGRAM), str(run_for)]
    return ServiceSpec("svc", argv, **kw)  # type: ignore[arg-type]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Supervisor, ParkingRunner, list[str]]]:
    reaper = WaitReaper()
    notes: list[str] = []
    parking = ParkingRunner(reaper, note=notes.append)
    sup = Supervisor(
        reaper=reaper, runner=parking.bind(ProcessRunner(reaper), None), log_dir=tmp_path / "log"
    )
    yield sup, parking, notes
    sup.shutdown(timeout=2)
    parking.close()


def wait_log(sup: Supervisor, text: str) -> list[str]:
    deadline = time.monotonic() + T
    while True:
        lines, _ = sup.logs("svc").read_since(0)
        if any(text in line for line in lines):
            return lines
        assert time.monotonic() < deadline, f"no {text!r} in {lines}: {sup.info('svc')}"
        time.sleep(0.05)


def test_the_first_start_is_the_parked_process(parts: tuple[Supervisor, ParkingRunner, list[str]]) -> None:
    sup, parking, notes = parts
    pid = parking.park(spec(restart=Restart.ALWAYS))
    assert parking.parked() == ["svc"]
    time.sleep(0.3)  # parked: it printed its line, which waits in the pipe until the start
    sup.add(spec(restart=Restart.ALWAYS))
    sup.start()
    lines = wait_log(sup, "got go")
    assert lines[:2] == [f"pid {pid} parked=1", "got go"]
    assert sup.info("svc").pid == pid and sup.info("svc").state == State.RUNNING
    assert parking.parked() == []
    assert notes == [f"svc: started the process parked at boot (pid {pid})"]


def test_a_restart_is_a_new_process(parts: tuple[Supervisor, ParkingRunner, list[str]]) -> None:
    sup, parking, _ = parts
    pid = parking.park(spec(0.2, restart=Restart.ALWAYS, backoff_base=0.05))
    sup.add(spec(0.2, restart=Restart.ALWAYS, backoff_base=0.05))
    sup.start()
    lines = wait_log(sup, "parked=0")
    again = [line for line in lines if line.startswith("pid ") and line.endswith("parked=0")]
    assert again and again[0] != f"pid {pid} parked=0"


def test_a_parked_process_that_died_is_replaced(parts: tuple[Supervisor, ParkingRunner, list[str]]) -> None:
    sup, parking, notes = parts
    dying = ServiceSpec(
        "svc", [sys.executable, "-c", "print('cannot import'); raise SystemExit(3)"], restart=Restart.NEVER
    )
    parking.park(dying)
    time.sleep(0.5)
    sup.add(dying)
    sup.start()
    assert sup.wait_for("svc", [State.FAILED, State.FINISHED], T)
    assert sup.info("svc").exit_code == 3  # the fresh run's status: the parked one was collected
    assert notes == [
        "svc: the parked process ended before its start (exit status 3: cannot import); starting it anew"
    ]


def test_a_changed_command_is_started_anew(parts: tuple[Supervisor, ParkingRunner, list[str]]) -> None:
    sup, parking, notes = parts
    old = parking.park(spec(30.0))
    sup.add(spec(31.0))
    sup.start()
    lines = wait_log(sup, "parked=0")
    assert f"pid {old} parked=1" not in lines  # the parked one's output is not the service's
    assert notes == ["svc: the parked process is not used (its command changed)"]
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)


def test_close_lets_parked_processes_exit(tmp_path: Path) -> None:
    parking = ParkingRunner(WaitReaper(), note=lambda _: None)
    pid = parking.park(spec())
    parking.close()
    assert parking.parked() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_parked_service_waits_for_its_go() -> None:
    assert wait_for_go(io.BytesIO(b"go\n"))
    assert not wait_for_go(io.BytesIO(b""))
    assert parked({PARKED_ENV: "1"}) and not parked({})


def test_a_parked_osd_that_is_not_needed_exits_without_reading_anything(tmp_path: Path) -> None:
    missing = tmp_path / "no-config.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "talos_os.osd", "--config", str(missing), "--port", "0"],
        env={**os.environ, PARKED_ENV: "1"}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_early_start_imports_neither_the_config_model_nor_the_network_stack() -> None:
    """The point of parking: osd is launched before PID 1 pays for its heavy imports."""
    heavy = ("pydantic", "pyroute2", "grpc", "cryptography", "yaml", "talos_os.config", "talos_os.init.main")
    code = (
        f"import sys, talos_os.init.early; print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
