"""osd's ``talos.os.v1.Upgrade`` service: take a bundle (fetched from a URL, or streamed by the
client), hand it to the init, and report progress until the node reboots.

osd only moves bytes into the staging directory on /var and asks; the init verifies the bundle,
writes the other slot, arms it and reboots (:mod:`talos_os.upgrade.agent` says why it is the init).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from talos_os.api.gen import upgrade_pb2 as pb
from talos_os.api.gen import upgrade_pb2_grpc as pb_grpc
from talos_os.lib.atomic import atomic_path
from talos_os.osd.auth import abort, current_caller
from talos_os.osd.initcall import ask_init
from talos_os.upgrade import STAGING
from talos_os.upgrade.download import DownloadError, download

log = logging.getLogger(__name__)

SERVICE = "talos.os.v1.Upgrade"
MAX_UPLOAD = 4 << 30
SPARE = 64 << 20  # bytes left free on /var after a bundle is stored
POLL = 0.5


class UpgradeServicer(pb_grpc.UpgradeServicer):
    def __init__(self, control_socket: Path, staging: Path = STAGING) -> None:
        self.control_socket = control_socket
        self.staging = staging
        self._upload_lock = threading.Lock()

    def _init(self, context: grpc.ServicerContext, op: str, **kw: Any) -> Any:
        return ask_init(context, self.control_socket, op, **kw)

    def _room(self, context: grpc.ServicerContext, size: int) -> None:
        self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.statvfs(self.staging)
        free = st.f_bavail * st.f_frsize
        if size + SPARE > free:
            abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the node's /var has {free >> 20} MiB free and the bundle needs {size >> 20} MiB: free some space",
            )

    def _preflight(self, context: grpc.ServicerContext) -> None:
        """Refuse before any transfer when the node cannot take an upgrade now."""
        slots = self._init(context, "upgrade_slots")
        if not slots.get("ab"):
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"cannot upgrade: {slots.get('message')}")
        if slots.get("trial"):
            abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot upgrade: slot {slots['trial']} is still on trial; wait until the node is ready on it",
            )
        job = self._init(context, "upgrade_status")
        if job and not job.get("finished"):
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, "an upgrade is already running on this node")

    # --- methods ------------------------------------------------------------------------------

    def Upload(
        self, request_iterator: Iterator[pb.UpgradeChunk], context: grpc.ServicerContext
    ) -> pb.UpgradeUploaded:
        if not self._upload_lock.acquire(blocking=False):
            abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "another bundle is being uploaded to this node"
            )
        try:
            self._preflight(context)
            self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
            h = hashlib.sha256()
            received = 0
            declared = 0
            with atomic_path(self.staging / "upload.bundle") as tmp:  # removed unless complete
                with open(tmp, "wb") as f:
                    for chunk in request_iterator:
                        if not declared and chunk.size:
                            declared = chunk.size
                            self._room(context, declared)
                        received += len(chunk.data)
                        if received > MAX_UPLOAD:
                            abort(
                                context,
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"a bundle is at most {MAX_UPLOAD >> 20} MiB",
                            )
                        h.update(chunk.data)
                        f.write(chunk.data)
                if declared and received != declared:
                    abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"the upload ended after {received} of {declared} bytes: send it again",
                    )
            log.warning("upgrade bundle uploaded by %s: %d bytes", current_caller().name, received)
            return pb.UpgradeUploaded(bytes=received, sha256=h.hexdigest())
        finally:
            self._upload_lock.release()

    def _fetch(
        self, request: pb.UpgradeInstall, context: grpc.ServicerContext, path: Path
    ) -> Iterator[pb.UpgradeProgress]:
        """The bundle from the URL into ``path``, with progress (a thread downloads, this yields)."""
        state: dict[str, Any] = {"done": 0, "total": 0, "note": "", "error": None, "finished": False}

        def run() -> None:
            try:
                download(
                    request.url,
                    path,
                    progress=lambda done, total: state.update(done=done, total=total or 0),
                    on_retry=lambda attempt, why, delay: state.update(
                        note=f"{why}; retry {attempt} in {delay:.1f} s"
                    ),
                )
            except (DownloadError, OSError) as exc:
                state["error"] = str(exc)
            finally:
                state["finished"] = True

        thread = threading.Thread(target=run, name="upgrade-download", daemon=True)
        thread.start()
        last: tuple[int, str] = (-1, "")
        while not state["finished"] and context.is_active():
            now = (state["done"], state["note"])
            if now != last:
                last = now
                yield pb.UpgradeProgress(
                    phase="downloading", done=state["done"], total=state["total"], message=state["note"]
                )
            time.sleep(POLL)
        thread.join()
        if state["error"]:
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, state["error"])
        yield pb.UpgradeProgress(phase="downloaded", done=state["done"], total=state["done"])

    def Install(
        self, request: pb.UpgradeInstall, context: grpc.ServicerContext
    ) -> Iterator[pb.UpgradeProgress]:
        caller = current_caller().name
        self._preflight(context)
        path = self.staging / f"install-{uuid.uuid4().hex[:12]}.bundle"
        self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        if request.url:
            log.warning("upgrade from %s requested by %s", request.url.split("@")[-1], caller)
            yield from self._fetch(request, context, path)
        else:
            uploaded = self.staging / "upload.bundle"
            if not uploaded.exists():
                abort(
                    context, grpc.StatusCode.FAILED_PRECONDITION, "no bundle was uploaded: upload one first"
                )
            os.replace(uploaded, path)
            log.warning("upgrade from an uploaded bundle requested by %s", caller)
        try:
            self._init(
                context, "upgrade_install", bundle=str(path), stage=request.stage, drain=not request.no_drain
            )
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        last: tuple[str, int] = ("", -1)
        while context.is_active():
            job = self._init(context, "upgrade_status") or {}
            if job.get("finished"):
                if job.get("error"):
                    abort(context, grpc.StatusCode.FAILED_PRECONDITION, job["error"])
                yield pb.UpgradeProgress(
                    phase=job["phase"], done=job["total"], total=job["total"], message=job["message"]
                )
                return
            now = (job.get("phase", ""), job.get("done", 0) >> 22)  # every 4 MiB at most
            if now != last:
                last = now
                yield pb.UpgradeProgress(
                    phase=job.get("phase", ""), done=job.get("done", 0), total=job.get("total", 0)
                )
            time.sleep(POLL)

    def Rollback(self, request: pb.UpgradeNothing, context: grpc.ServicerContext) -> pb.UpgradeDone:
        log.warning("rollback requested by %s", current_caller().name)
        return pb.UpgradeDone(message=str(self._init(context, "upgrade_rollback")))

    def Slots(self, request: pb.UpgradeNothing, context: grpc.ServicerContext) -> pb.UpgradeSlots:
        data = self._init(context, "upgrade_slots")
        return pb.UpgradeSlots(
            ab=bool(data.get("ab")),
            slots=[
                pb.UpgradeSlot(
                    slot=s["slot"],
                    state=s["state"],
                    version=s["version"],
                    running=s["running"],
                    is_default=s["default"],
                )
                for s in data.get("slots", [])
            ],
            trial=data.get("trial", ""),
            last_failure=data.get("last_failure", ""),
            message=data.get("message", ""),
        )


def register(server: grpc.Server, control_socket: Path) -> None:
    """Serve the Upgrade service on ``server`` (its roles are in :data:`talos_os.osd.auth.POLICY`)."""
    pb_grpc.add_UpgradeServicer_to_server(UpgradeServicer(control_socket), server)  # type: ignore[no-untyped-call]
