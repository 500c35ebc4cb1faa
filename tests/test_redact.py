"""Secrets never reach the logs readers can read: the init's console/kernel log and service logs."""

from __future__ import annotations

import sys
from pathlib import Path

from talos_os import pki
from talos_os.init.console import Console
from talos_os.init.supervisor import LogBuffer, Restart, ServiceSpec, State, Supervisor
from talos_os.redact import MARK, LineRedactor, redact

TOKEN = "u07hao.tdk7jp4l7ykd4022"


def _key() -> tuple[str, str]:
    ca = pki.new_os_ca("redact-test")
    return ca.key_pem.decode(), pki.b64encode(ca.key_pem)


def test_redact_removes_keys_and_tokens_but_keeps_ordinary_text() -> None:
    pem, b64 = _key()
    text = f"token: {TOKEN}\nkey: {b64}\n{pem}\naescbcEncryptionSecret=z9Qm6Xx2qs1m2bD0F8u4Oq/5b4Z0iXyG2mW1Qy8bq9c="
    out = redact(text, secrets=["hunter2-long-password"])
    for secret in (TOKEN, b64[:40], pem.splitlines()[1], "z9Qm6Xx2qs1m2bD0F8u4Oq"):
        assert secret not in out
    assert out.count(MARK) >= 4
    ordinary = "machine.network.hostname (line 3, column 15): expected a real date; sha256:" + "ab" * 32
    assert redact(ordinary) == ordinary
    url = 'Get "https://10.5.0.2:6443/apis/apps/v1/namespaces/kube-system/deployments": context deadline exceeded'
    assert redact(url) == url, "a URL path is not key material"
    assert redact("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs") == (
        "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs"
    )
    assert (
        redact("the password is hunter2-long-password", ["hunter2-long-password"])
        == f"the password is {MARK}"
    )


def test_line_redactor_covers_a_pem_block_line_by_line() -> None:
    pem, _ = _key()
    lines = ["before", *pem.splitlines(), "after"]
    r = LineRedactor()
    out = [r(line) for line in lines]
    assert out[0] == "before" and out[-1] == "after"
    assert all(line == MARK for line in out[1:-1])


def test_service_logs_are_redacted(tmp_path: Path) -> None:
    pem, b64 = _key()
    script = f"print('joining with token {TOKEN}'); print({pem!r}); print('ca key: {b64}'); print('done')"
    sup = Supervisor(log_dir=tmp_path / "log")
    sup.add(ServiceSpec("leaky", [sys.executable, "-c", script], restart=Restart.NEVER, oneshot=True))
    sup.start()
    try:
        assert sup.wait_for("leaky", [State.FINISHED], 10)
        buf: LogBuffer = sup.logs("leaky")
        kept = "\n".join(buf.lines())
        on_disk = (tmp_path / "log" / "leaky.log").read_text()
    finally:
        sup.shutdown(timeout=2)
    for text in (kept, on_disk):
        assert "done" in text and "joining with token" in text
        assert TOKEN not in text and b64[:40] not in text and pem.splitlines()[1] not in text


def test_the_init_console_and_kernel_log_are_redacted(tmp_path: Path) -> None:
    console, kmsg = tmp_path / "console", tmp_path / "kmsg"
    Console(str(console), str(kmsg)).log(f"config is invalid:\n  machine (line 4): got 'token: {TOKEN}'")
    for path in (console, kmsg):
        text = path.read_text()
        assert "[talos] config is invalid:" in text and TOKEN not in text and MARK in text
