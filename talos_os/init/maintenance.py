"""The init's half of maintenance mode: when no source offers a config, serve the maintenance API
and wait for ``osctl apply-config --insecure``.

Where the config comes from, in order: the config saved on EPHEMERAL (a config pushed or applied
before, :data:`talos_os.init.reconfigure.SAVED`), then the platform's sources. When those offer
nothing :data:`AFTER` times in a row (the platform's own retries), the init makes a self-signed
certificate, prints its fingerprint and the node's addresses on the console, and starts
``python3 -m talos_os.maintenance`` (its own process: PID 1 never loads grpc). The platform is
still polled while it runs; a config accepted by the API arrives through the handoff file, the
server exits, and the boot goes on with that config.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from talos_os import maintenance, pki
from talos_os.init.reconfigure import SAVED, read_saved
from talos_os.init.supervisor.reaper import Reaper
from talos_os.lib.fetch import ConfigRef

AFTER = 3  # attempts without any config source before the maintenance API starts
POLL = 0.25  # seconds between looks at the handoff file while the API runs
PUSHED = "osctl apply-config --insecure (maintenance mode)"

Log = Callable[[str], None]


class Maintenance:
    """Wraps a platform's ``find`` for :func:`~talos_os.init.acquire.acquire_config` and starts the API."""

    def __init__(
        self,
        log: Log,
        reaper: Reaper,
        addresses: Callable[[], list[str]],
        *,
        image_map: Path | None = None,
        state: Path = maintenance.STATE,
        python: str = sys.executable,
        port: int = maintenance.PORT,
        after: int = AFTER,
    ) -> None:
        self.log = log
        self.reaper = reaper
        self.addresses = addresses
        self.image_map = image_map
        self.state = state
        self.python = python
        self.port = port
        self.after = after
        self.misses = 0
        self.pushed = False
        self.fingerprint = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._exited = threading.Event()

    @property
    def handoff(self) -> Path:
        return self.state / maintenance.HANDOFF.name

    def find(
        self, inner: Callable[[], ConfigRef | None], saved: Path = SAVED
    ) -> Callable[[], ConfigRef | None]:
        """``find`` for acquire_config: the handoff, the saved config, then ``inner`` (starting the API
        once it has found nothing ``after`` times)."""

        def find() -> ConfigRef | None:
            if self.handoff.exists():
                data = self.handoff.read_bytes()
                self.handoff.unlink()
                self.pushed = True
                return ConfigRef(source=PUSHED, data=data)
            stored = read_saved(saved)
            if stored:
                return ConfigRef(source=f"saved config {saved}", data=stored)
            ref = inner()
            if ref is None:
                self.misses += 1
                if self.proc is None and self.misses >= self.after:
                    self.start()
                elif self.proc is not None and self._exited.is_set() and not self.handoff.exists():
                    self.log("maintenance: the API exited; starting it again")
                    self.start()
            return ref

        return find

    def sleep(self, delay: float) -> None:
        """acquire_config's sleep: cut short as soon as a config was pushed."""
        end = time.monotonic() + delay
        while self.proc is not None and not self.handoff.exists() and time.monotonic() < end:
            time.sleep(min(POLL, max(0.0, end - time.monotonic())))
        if self.proc is None:
            time.sleep(delay)

    def start(self) -> None:
        """Certificate, console lines, then the server process."""
        from talos_os.maintenance import tls  # cryptography: only on nodes that wait for a config

        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert, key = tls.self_signed(maintenance.SERVER_NAME)
        cert_path, key_path = self.state / maintenance.CERT.name, self.state / maintenance.KEY.name
        pki.write_secret(key_path, key)
        pki.write_secret(cert_path, cert)
        self.fingerprint = tls.fingerprint(cert)
        argv = [self.python, "-m", "talos_os.maintenance", "--cert", str(cert_path), "--key", str(key_path),
                "--handoff", str(self.handoff), "--port", str(self.port)]  # fmt: skip
        if self.image_map is not None:
            argv += ["--image-map", str(self.image_map)]
        self._exited.clear()
        self.proc = self.reaper.spawn(lambda: _popen(argv))
        threading.Thread(target=self._wait, args=(self.proc,), name="maintenance-wait", daemon=True).start()
        for line in console_lines(self.addresses(), self.port, self.fingerprint):
            self.log(line)

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        self.reaper.wait(proc)
        self._exited.set()

    def stop(self, timeout: float = 10.0) -> None:
        """The server exits by itself after accepting; otherwise it is stopped (a platform source won)."""
        if self.proc is None:
            return
        if not self._exited.wait(timeout if self.pushed else 0.0):
            self.reaper.signal(self.proc, signal.SIGTERM, group=False)
            if not self._exited.wait(timeout):
                self.reaper.signal(self.proc, signal.SIGKILL, group=False)
                self._exited.wait(timeout)
        for name in (maintenance.CERT.name, maintenance.KEY.name):
            with contextlib.suppress(OSError):
                (self.state / name).unlink()
        self.log("maintenance: the API is closed; the node has its config")


def _popen(argv: list[str]) -> subprocess.Popen[bytes]:
    # stderr to the console: a crash of the server is seen where the operator looks.
    console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=console, stderr=console, close_fds=True
        )
    finally:
        os.close(console)


def console_lines(addresses: list[str], port: int, fingerprint: str) -> list[str]:
    """What the operator needs to continue, as printed on the console."""
    node = addresses[0] if addresses else "NODE"
    pin = f"--cert-fingerprint {fingerprint}"
    return [
        f"maintenance: no machine config from this platform's sources: waiting for one on port {port} "
        "(TLS, no client certificate needed)",
        f"maintenance: addresses {', '.join(addresses) or 'none yet (check DHCP)'}",
        f"maintenance: certificate fingerprint (SHA-256) {fingerprint}",
        f"maintenance: list the disks: osctl disks --insecure -n {node} {pin}",
        f"maintenance: push a config:  osctl apply-config --insecure -n {node} --file CONFIG.yaml {pin}",
    ]


def persist(data: bytes, path: Path = SAVED) -> Path:
    """Keep a pushed config for the next boots (on EPHEMERAL; on a live ISO /var is in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pki.write_secret(path, data)
    return path
