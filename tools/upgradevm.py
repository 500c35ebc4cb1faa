"""A node booted through its firmware and GRUB (as a disk boots, so A/B slots switch), with a file
server on loopback for bundles: shared by the upgrade e2e tests and ``make bench``."""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bakery import qemu
from tools.nodevm import CONFIG_HOST, osctl, user_net, wait_api, wait_ready

BOOT_TIMEOUT = 900  # TCG on a shared 2-core machine, through the firmware's disk reads


class Files:
    """Serves files by name on loopback (the guest fetches http://CONFIG_HOST/NAME); 404 otherwise."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = files.get(self.path.lstrip("/"))
                if path is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        self.wfile.write(chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str, path: Path) -> str:
        self.files[name] = path
        return f"http://{CONFIG_HOST}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Node:
    """A node booted through its firmware and GRUB, disk kept across reboots (and QEMU restarts)."""

    disk: Path
    firmware: str
    config: Path
    talosconfig: Path
    files: Files
    port: int
    vm: qemu.Boot | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> qemu.Boot:
        net = user_net(forwards={CONFIG_HOST: self.files.port}, hostfwd={self.port: 50000})
        self.vm = qemu.start(
            self.disk,
            firmware=self.firmware,
            snapshot=False,
            reboot=True,
            memory_mb=1024,
            extra=[*net, "-fw_cfg", f"name=opt/talos/config,file={self.config}"],
        )
        return self.vm

    def osctl(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        return osctl(self.talosconfig, self.endpoint, *args, timeout=timeout)

    def version(self) -> dict[str, object]:
        result = self.osctl("version", "-o", "json")
        assert result.returncode == 0, result.stderr
        server: dict[str, object] = json.loads(result.stdout)["servers"][0]
        return server

    def version_tag(self) -> str:
        """The node's version, or "" while it does not answer."""
        result = self.osctl("version", "-o", "json", timeout=60)
        if result.returncode != 0:
            return ""
        return str(json.loads(result.stdout)["servers"][0]["tag"])

    def slots(self) -> dict[str, tuple[str, str, bool, bool]]:
        upgrade = self.version()["upgrade"]
        assert isinstance(upgrade, dict)
        return {
            s["slot"]: (s["state"], s["version"], s["running"], s["is_default"]) for s in upgrade["slots"]
        }

    def wait_up(self, since: int) -> None:
        assert self.vm is not None
        wait_ready(self.vm, BOOT_TIMEOUT, since)
        wait_api(self.talosconfig, self.endpoint, timeout=BOOT_TIMEOUT)

    def lines_since(self, since: int) -> str:
        assert self.vm is not None
        return "\n".join(self.vm.lines[since:])
