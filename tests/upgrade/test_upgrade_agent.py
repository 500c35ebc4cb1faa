"""The init's upgrade agent over a disk of plain files: boot reconciliation, the trial, jobs, rollback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from upgradekit import FileDisk, make_bundle

from talos_os.lib.control import ControlError
from talos_os.upgrade import agent, drain, slots


def _agent(
    disk: FileDisk, root: str, version: str, tmp: Path, reboots: list[str], **kw: object
) -> agent.Agent:
    staging = tmp / "staging"
    staging.mkdir(exist_ok=True)
    return agent.Agent(
        disk, root, version, log=lambda _m: None, request_reboot=lambda: reboots.append("reboot"),
        staging=staging, arch="x86_64", force=lambda: reboots.append("forced"), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _wait(job: agent.Job | None, timeout: float = 30) -> agent.Job:
    end = time.monotonic() + timeout
    while job is None or not job.finished:
        assert time.monotonic() < end, "the job did not finish"
        time.sleep(0.05)
    return job


def test_upgrade_trial_good_then_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "REBOOT_GRACE", 0.0)
    disk, reboots = FileDisk(tmp_path), list[str]()
    a = _agent(disk, "ROOT-A", "0.1.0", tmp_path, reboots)
    a.on_boot()
    staged = a.staging / "install-1.bundle"
    staged.write_bytes(make_bundle(tmp_path, "0.2.0").read_bytes())
    assert a.handlers()["upgrade_install"]({"bundle": str(staged), "stage": False}) == "started"
    job = _wait(a.job)
    assert not job.error and job.phase == "rebooting" and "slot B holds 0.2.0" in job.message
    assert reboots == ["reboot"] and not staged.exists()
    # GRUB boots B once (and clears next_entry); the init on B sees its trial, the node gets ready
    env = disk.env()
    env["next_entry"] = ""
    from talos_os.upgrade import grubenv

    grubenv.write(disk.boot_dir / "boot/grub/grubenv", env)
    b = _agent(disk, "ROOT-B", "0.2.0", tmp_path, reboots)
    b.on_boot()
    assert b.trial
    with pytest.raises(ControlError, match="still on trial"):
        b.start_install({"bundle": str(staged)})
    thread = b.watch(lambda: None)
    assert thread is not None
    thread.join(10)
    assert disk.env()["saved_entry"] == "talos-B" and not b.trial
    report = b.slots()
    assert [(s["slot"], s["state"], s["version"], s["running"], s["default"]) for s in report["slots"]] == [
        ("A", "good", "0.1.0", False, False),
        ("B", "good", "0.2.0", True, True),
    ]
    assert "slot A (0.1.0) is the default now" in b.rollback()
    assert disk.env()["saved_entry"] == "talos-A"


def test_a_trial_that_never_gets_ready_reboots_and_the_old_slot_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.time, "sleep", lambda _s: None)
    disk, reboots = FileDisk(tmp_path), list[str]()
    from talos_os.upgrade import grubenv

    env = slots.arm(slots.begin_write(disk.env(), "A")[0], "A", "B", "0.2.0", "")
    grubenv.write(disk.boot_dir / "boot/grub/grubenv", env)
    b = _agent(disk, "ROOT-B", "0.2.0", tmp_path, reboots, deadline=5.0)
    b.on_boot()
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    thread = b.watch(lambda: "osd does not answer", clock)
    assert thread is not None
    thread.join(10)
    assert reboots == ["reboot", "forced"] and disk.env()["saved_entry"] == "talos-A"
    a = _agent(disk, "ROOT-A", "0.1.0", tmp_path, reboots)
    a.on_boot()
    report = a.slots()
    assert "upgrade to 0.2.0 in slot B did not become ready" in report["last_failure"]
    with pytest.raises(ControlError, match="whose upgrade failed"):
        a.rollback()


def test_a_bad_bundle_is_a_failed_job_and_the_node_carries_on(tmp_path: Path) -> None:
    disk, reboots = FileDisk(tmp_path), list[str]()
    a = _agent(disk, "ROOT-A", "0.1.0", tmp_path, reboots)
    a.on_boot()
    staged = a.staging / "install-2.bundle"
    staged.write_bytes(make_bundle(tmp_path, "0.2.0", arch="aarch64").read_bytes())
    a.start_install({"bundle": str(staged)})
    job = _wait(a.job)
    assert job.phase == "failed" and "the bundle is for aarch64" in job.error and not reboots
    assert disk.env()["saved_entry"] == "talos-A" and "talos_B" not in disk.env()
    with pytest.raises(ControlError, match="is not a bundle in"):
        a.start_install({"bundle": "/etc/passwd"})


def test_a_node_without_slots_says_so(tmp_path: Path) -> None:
    a = _agent(FileDisk(tmp_path), "iso:TALOS/root.sqsh", "0.1.0", tmp_path, [])
    a.on_boot()
    assert a.slots()["ab"] is False
    with pytest.raises(ControlError, match="did not boot from an A/B disk"):
        a.start_install({"bundle": "x"})


def test_the_fail_init_test_switch_raises_after_reconciling(tmp_path: Path) -> None:
    a = _agent(FileDisk(tmp_path), "ROOT-A", "0.1.0", tmp_path, [])
    with pytest.raises(RuntimeError, match="fails on purpose"):
        a.on_boot(agent.FAIL_INIT)


def test_every_upgrade_method_is_in_osds_policy_and_only_slots_is_open_to_readers() -> None:
    from talos_os import pki
    from talos_os.api.gen import upgrade_pb2
    from talos_os.osd.auth import POLICY

    methods = {
        f"/talos.os.v1.Upgrade/{m.name}" for m in upgrade_pb2.DESCRIPTOR.services_by_name["Upgrade"].methods
    }
    assert methods <= set(POLICY)
    readable = {m for m in methods if pki.ROLE_READER in POLICY[m]}
    assert readable == {"/talos.os.v1.Upgrade/Slots"}


def test_readiness_is_osd_answering_and_the_kubelet_once_it_has_run(tmp_path: Path) -> None:
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config = tmp_path / "kubelet-config.yaml"
        assert agent.node_ready(port, kubernetes=True, kubelet_config=config) is None, (
            "kubelet never ran here"
        )
        config.write_text("kind: KubeletConfiguration\n")
        why = agent.node_ready(port, kubernetes=True, kubelet_config=config, timeout=1)
        assert why is not None and "kubelet" in why

    class Healthz(BaseHTTPRequestHandler):
        def log_message(self, *_a: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed = free.getsockname()[1]
    free.close()
    assert "osd does not answer" in (agent.node_ready(closed, kubernetes=False) or "")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        import unittest.mock

        url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
        with unittest.mock.patch.object(agent, "KUBELET_HEALTHZ", url):
            assert agent.node_ready(server.server_address[1], kubernetes=True, kubelet_config=config) is None
    finally:
        server.shutdown()
        server.server_close()


def test_an_upgrade_without_kubernetes_credentials_reboots_undrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "REBOOT_GRACE", 0.0)
    disk, reboots = FileDisk(tmp_path), list[str]()
    a = _agent(disk, "ROOT-A", "0.1.0", tmp_path, reboots, kube_node=lambda: "node-1")
    a.on_boot()
    lines: list[str] = []
    a.log = lines.append
    monkeypatch.setattr(drain, "ADMIN_KUBECONFIG", tmp_path / "absent.conf")
    monkeypatch.setattr(drain, "KUBELET_KUBECONFIG", tmp_path / "absent-too.conf")
    staged = a.staging / "install-3.bundle"
    staged.write_bytes(make_bundle(tmp_path, "0.2.0").read_bytes())
    a.start_install({"bundle": str(staged)})
    job = _wait(a.job)
    assert not job.error and reboots == ["reboot"], job.error
    assert any("without a drain" in line for line in lines)
