"""osd's Upgrade service against the init's real control socket and upgrade agent (a disk of plain
files): upload, install with progress, slots, rollback and refusals, as osctl calls them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from upgradekit import FileDisk, make_bundle

from talos_os.api.gen import upgrade_pb2 as pb
from talos_os.init.control import ControlServer
from talos_os.osd import auth
from talos_os.osd.upgrade import UpgradeServicer
from talos_os.upgrade import agent


class Aborted(Exception):
    pass


class Context:
    """The parts of a grpc ServicerContext the service uses."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)

    def is_active(self) -> bool:
        return True


@pytest.fixture
def service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[UpgradeServicer, FileDisk, list[str]]]:
    monkeypatch.setattr(agent, "REBOOT_GRACE", 0.0)
    token = auth._CALLER.set(auth.Caller("admin", frozenset({"os:admin"})))
    disk, reboots = FileDisk(tmp_path), list[str]()
    staging = tmp_path / "staging"
    staging.mkdir()
    a = agent.Agent(
        disk, "ROOT-A", "0.1.0", log=lambda _m: None, request_reboot=lambda: reboots.append("reboot"),
        staging=staging, arch="x86_64", force=lambda: None,
    )  # fmt: skip
    a.on_boot()
    sock = tmp_path / "init.sock"
    with ControlServer(sock, a.handlers()):
        yield UpgradeServicer(sock, staging), disk, reboots
    auth._CALLER.reset(token)


def _chunks(path: Path) -> Iterator[pb.UpgradeChunk]:
    data = path.read_bytes()
    yield pb.UpgradeChunk(size=len(data), data=data[: 1 << 16])
    for i in range(1 << 16, len(data), 1 << 16):
        yield pb.UpgradeChunk(data=data[i : i + (1 << 16)])


def test_upload_install_slots_and_rollback(service: Any, tmp_path: Path) -> None:
    svc, disk, reboots = service
    source = make_bundle(tmp_path, "0.2.0")
    uploaded = svc.Upload(_chunks(source), Context())
    assert uploaded.bytes == source.stat().st_size
    progress = list(svc.Install(pb.UpgradeInstall(), Context()))
    phases = [p.phase for p in progress]
    assert phases[-1] == "rebooting" and "slot B holds 0.2.0" in progress[-1].message
    assert reboots == ["reboot"] and disk.env()["next_entry"] == "talos-B"
    slots = svc.Slots(pb.UpgradeNothing(), Context())
    assert slots.ab and [(s.slot, s.state, s.version) for s in slots.slots] == [
        ("A", "good", "0.1.0"),
        ("B", "trying", "0.2.0"),
    ]
    ctx = Context()
    with pytest.raises(Aborted):
        svc.Rollback(pb.UpgradeNothing(), ctx)
    assert ctx.code == grpc.StatusCode.FAILED_PRECONDITION and "never became ready" in ctx.details


def test_install_refusals_are_one_sentence(service: Any, tmp_path: Path) -> None:
    svc, disk, reboots = service
    ctx = Context()
    with pytest.raises(Aborted):
        list(svc.Install(pb.UpgradeInstall(), ctx))
    assert "no bundle was uploaded" in ctx.details
    svc.Upload(_chunks(make_bundle(tmp_path, arch="aarch64")), Context())
    ctx = Context()
    with pytest.raises(Aborted):
        list(svc.Install(pb.UpgradeInstall(), ctx))
    assert ctx.code == grpc.StatusCode.FAILED_PRECONDITION and "the bundle is for aarch64" in ctx.details
    ctx = Context()
    with pytest.raises(Aborted):
        list(svc.Install(pb.UpgradeInstall(url="ftp://x/y"), ctx))
    assert "not an http:// or https:// URL" in ctx.details
    assert not reboots and "talos_B" not in disk.env()


def test_install_from_a_url_downloads_with_progress_and_a_404_is_one_sentence(
    service: Any, tmp_path: Path
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    svc, disk, reboots = service
    source = make_bundle(tmp_path, "0.3.0")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_a: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/b.upgrade":
                self.send_error(404)
                return
            data = source.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ctx = Context()
        with pytest.raises(Aborted):
            list(svc.Install(pb.UpgradeInstall(url=f"{base}/missing"), ctx))
        assert "answered HTTP 404" in ctx.details and not reboots
        progress = list(svc.Install(pb.UpgradeInstall(url=f"{base}/b.upgrade", stage=True), Context()))
        phases = [p.phase for p in progress]
        assert "downloaded" in phases and phases[-1] == "staged" and not reboots
        assert "the next reboot tries it once" in progress[-1].message
        assert disk.env()["next_entry"] == "talos-B"
    finally:
        server.shutdown()
        server.server_close()
