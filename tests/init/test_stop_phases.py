"""Shutdown, reboot and reset as phase lists: their order, each phase logged with its duration, and
what a failing phase does (a best-effort one is reported and the rest run; any other propagates to
the panic that reboots the node, as before these were phases). Every side effect is faked."""

from __future__ import annotations

from typing import Any

import pytest

from talos_os.init import main as init_main
from talos_os.init.main import REBOOT, RESET, SHUTDOWN, STOP_PHASES, Boot, StopPhase, shutdown_node

STOPPING = ["stop kubelet", "stop pods", "stop services", "stop control socket"]


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        self.lines.extend(message.splitlines())


class Recorder:
    """Stands in for the supervisor, the control server and the network manager: records each call."""

    def __init__(self, events: list[str], fail: set[str] | None = None) -> None:
        self.events = events
        self.fail = fail or set()

    def _call(self, what: str) -> None:
        self.events.append(what)
        if what in self.fail:
            raise RuntimeError(f"{what} broke")

    def stop_service(self, name: str, timeout: float) -> None:
        self._call(f"stop_service {name}")

    def shutdown(self) -> None:
        self._call("supervisor shutdown")

    def stop(self, release: bool | None = None) -> None:
        self._call("control stop" if release is None else f"network stop release={release}")


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> tuple[Boot, list[str], Lines]:
    """A booted node's Boot with every side effect recorded in ``events`` and its log in ``Lines``."""
    events: list[str] = []
    log = Lines()
    boot = Boot()
    boot.console.log = log  # type: ignore[method-assign]
    boot.kubernetes = object()  # type: ignore[assignment]
    boot.supervisor = Recorder(events)  # type: ignore[assignment]
    boot.control = Recorder(events)  # type: ignore[assignment]
    boot.network = Recorder(events)  # type: ignore[assignment]
    mounted = {"/etc/cni", "/etc/kubernetes", "/var"}
    monkeypatch.setattr(init_main.os.path, "ismount", lambda path: path in mounted)
    monkeypatch.setattr(init_main.os, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(
        init_main.syscalls, "umount", lambda target, flags=0: events.append(f"umount {target}")
    )
    monkeypatch.setattr(init_main.syscalls, "reboot", lambda cmd: events.append(f"reboot {cmd:#x}"))
    monkeypatch.setattr(init_main.kubernetes_node, "stop_pods", lambda run, log: events.append("stop pods"))
    monkeypatch.setattr(
        init_main.disks, "wipe_ephemeral", lambda ops, log, prefer_disk: events.append("wipe")
    )
    monkeypatch.setattr(init_main.disks, "root_disk", lambda: "/dev/vda")
    return boot, events, log


def test_the_three_lists_in_order() -> None:
    assert [p.name for p in SHUTDOWN] == [
        *STOPPING, "release network", "sync", "unmount", "final sync", "power off",
    ]  # fmt: skip
    assert [p.name for p in REBOOT] == [*STOPPING, "stop network", "sync", "unmount", "final sync", "reboot"]
    assert [p.name for p in RESET] == [
        *STOPPING, "release network", "sync", "unmount", "wipe ephemeral", "final sync", "reboot",
    ]  # fmt: skip
    assert STOP_PHASES == {"shutdown": SHUTDOWN, "reboot": REBOOT, "reset": RESET}
    for phases in STOP_PHASES.values():  # one duration per name
        assert len({p.name for p in phases}) == len(phases)
    best_effort = {p.name for phases in STOP_PHASES.values() for p in phases if p.best_effort}
    assert best_effort == {"stop pods", "release network", "stop network"}  # they ignored errors before


@pytest.mark.parametrize(
    ("action", "phases", "effects"),
    [
        ("reboot", REBOOT, ["network stop release=False", "reboot 0x1234567"]),
        ("shutdown", SHUTDOWN, ["network stop release=True", "reboot 0x4321fedc"]),
        ("reset", RESET, ["network stop release=True", "wipe", "reboot 0x1234567"]),
    ],
)
def test_each_action_runs_its_phases_and_logs_each_with_a_duration(
    node: tuple[Boot, list[str], Lines], action: str, phases: list[StopPhase], effects: list[str]
) -> None:
    boot, events, log = node
    shutdown_node(boot, action)
    assert log.lines[0] == f"{action}: stopping services"
    done = [line for line in log.lines if line.startswith(f"{action} phase ")]
    assert [line.split(":")[0] for line in done] == [f"{action} phase {p.name}" for p in phases]
    assert all(" done in " in line and line.endswith(" ms") for line in done)
    assert not any(line.startswith("phase ") for line in log.lines)  # the boot bench reads those
    assert list(boot.stop_durations) == [p.name for p in phases]
    assert ("powering off" if action == "shutdown" else "rebooting") in log.lines
    last = log.lines.index(done[-1])
    assert log.lines[last - 1] == ("powering off" if action == "shutdown" else "rebooting")
    assert events[:4] == ["stop_service kubelet", "stop pods", "supervisor shutdown", "control stop"]
    assert events[4] == effects[0]
    assert events[5:9] == ["sync", "umount /etc/cni", "umount /etc/kubernetes", "umount /var"]
    assert events[9:] == [*effects[1:-1], "sync", effects[-1]]


def test_a_failing_best_effort_phase_is_reported_and_the_rest_run(
    node: tuple[Boot, list[str], Lines],
) -> None:
    boot, events, log = node
    boot.network.fail = {"network stop release=False"}  # type: ignore[union-attr]
    shutdown_node(boot, "reboot")
    assert any(
        line.startswith("reboot phase stop network: failed after ")
        and line.endswith("ms: network stop release=False broke")
        for line in log.lines
    )
    assert "stop network" not in boot.stop_durations
    assert events[-1] == f"reboot {init_main.syscalls.LINUX_REBOOT_CMD_RESTART:#x}"  # the rest ran


def test_a_failing_phase_that_is_not_best_effort_stops_the_list(node: tuple[Boot, list[str], Lines]) -> None:
    """As before: the error reaches main, whose panic logs it and reboots after the delay."""
    boot, events, log = node
    boot.supervisor.fail = {"supervisor shutdown"}  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="supervisor shutdown broke"):
        shutdown_node(boot, "shutdown")
    assert any(line.startswith("shutdown phase stop services: failed after ") for line in log.lines)
    assert events == ["stop_service kubelet", "stop pods", "supervisor shutdown"]


def test_a_node_without_services_or_network_still_goes_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """talos.test=poweroff stops right after the platform phase: nothing is running yet."""
    events: list[str] = []
    log = Lines()
    boot = Boot()
    boot.console.log = log  # type: ignore[method-assign]
    monkeypatch.setattr(init_main.os.path, "ismount", lambda path: False)
    monkeypatch.setattr(init_main.os, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(init_main.syscalls, "reboot", lambda cmd: events.append(f"reboot {cmd:#x}"))
    shutdown_node(boot, "shutdown")
    assert events == ["sync", "sync", f"reboot {init_main.syscalls.LINUX_REBOOT_CMD_POWER_OFF:#x}"]
    assert len([line for line in log.lines if " done in " in line]) == len(SHUTDOWN)


def test_unmounting_a_busy_var_detaches_it(
    node: tuple[Boot, list[str], Lines], monkeypatch: pytest.MonkeyPatch
) -> None:
    boot, events, log = node

    def umount(target: str, flags: int = 0) -> Any:
        events.append(f"umount {target} {flags}")
        if target == "/var" and not flags:
            raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(init_main.syscalls, "umount", umount)
    shutdown_node(boot, "reboot")
    assert "reboot: unmount /var: [Errno 16] Device or resource busy; detaching it" in log.lines
    assert f"umount /var {init_main.syscalls.MNT_DETACH}" in events
    assert any(line.startswith("reboot phase unmount: done in ") for line in log.lines)
