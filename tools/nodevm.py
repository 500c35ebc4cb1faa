"""Boot a baked node in QEMU with a machine config, the way each platform hands it over.

Shared by the end-to-end tests, ``make demo`` and ``make bench``. Every server here listens on
127.0.0.1 only; the guest reaches them through QEMU's user network, which is started with
``restrict=on`` so nothing the guest sends can leave the host except through the forwards below.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bakery import qemu

CONFIG_HOST = "10.0.2.100"  # the address the guest fetches its config from (forwarded to loopback)
IMDS_HOST = "169.254.169.254"
READY = re.compile(r"\[talos\] node ready: (\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@dataclass
class ConfigServer:
    """Serves ``/config.yaml`` on loopback; the body can change while a node waits for it."""

    body: bytes = b""
    requests: list[str] = field(default_factory=list)
    port: int = 0

    def set(self, body: bytes | str) -> None:
        self.body = body.encode() if isinstance(body, str) else body

    @property
    def guest_url(self) -> str:
        return f"http://{CONFIG_HOST}/config.yaml"


@contextmanager
def config_server(body: bytes | str = b"") -> Iterator[ConfigServer]:
    state = ConfigServer()
    state.set(body)

    class Handler(_Quiet):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path != "/config.yaml" or not state.body:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

    with _serve(Handler) as port:
        state.port = port
        yield state


@dataclass
class ImdsServer:
    """A strict IMDSv2: token PUT with a TTL header first, then GETs carrying the token.

    Anything else (an IMDSv1-style GET, a GET with a wrong token, a PUT without TTL) is answered
    401/400 and recorded in ``violations``, so a test can assert the guest spoke v2 exactly.
    """

    user_data: bytes | None = None
    hostname: str = "ip-10-0-2-15.ec2.internal"
    instance_id: str = "i-0123456789abcdef0"
    tokens: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    port: int = 0

    def metadata(self, path: str) -> bytes | None:
        values = {
            "/latest/user-data": self.user_data,
            "/latest/meta-data/instance-id": self.instance_id.encode(),
            "/latest/meta-data/hostname": self.hostname.encode(),
            "/latest/meta-data/local-hostname": self.hostname.encode(),
            "/latest/meta-data/local-ipv4": b"10.0.2.15",
            "/latest/meta-data/placement/region": b"us-east-1",
        }
        return values.get(path)


@contextmanager
def imds_server(user_data: bytes | None) -> Iterator[ImdsServer]:
    state = ImdsServer(user_data=user_data)

    class Handler(_Quiet):
        def _reply(self, code: int, body: bytes = b"") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            state.log.append(f"PUT {self.path}")
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            if self.path != "/latest/api/token" or not ttl or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                state.violations.append(f"bad token request {self.path} ttl={ttl}")
                self._reply(400)
                return
            token = secrets.token_urlsafe(24)
            state.tokens.add(token)
            self._reply(200, token.encode())

        def do_GET(self) -> None:
            state.log.append(f"GET {self.path}")
            token = self.headers.get("X-aws-ec2-metadata-token")
            if token not in state.tokens:
                state.violations.append(f"GET {self.path} without a valid token")
                self._reply(401)
                return
            body = state.metadata(self.path)
            self._reply(404) if body is None else self._reply(200, body)

    with _serve(Handler) as port:
        state.port = port
        yield state


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class NodeImage:
    """The pieces of a bake a node boot needs (direct kernel boot skips the firmware's slow disk reads)."""

    raw: Path
    kernel: Path
    initramfs: Path
    cmdline: str

    @classmethod
    def from_manifest(cls, manifest: Path) -> NodeImage:
        """The files a bake wrote next to its manifest (``talos-<platform>.raw.manifest.json``)."""
        data = json.loads(manifest.read_text())
        raw = manifest.parent / str(data["image"])
        stem = raw.name.removesuffix(".raw")
        return cls(
            raw=raw,
            kernel=raw.with_name(f"{stem}-vmlinuz"),
            initramfs=raw.with_name(f"{stem}-initramfs.zst"),
            cmdline=str(data["cmdline"]),
        )


def node_cmdline(base: str, *, platform: str | None, config_url: str | None = None, extra: str = "") -> str:
    """The baked command line with this boot's platform and config URL (``None`` removes them)."""
    words = [w for w in base.split() if not w.startswith(("talos.platform=", "talos.config="))]
    if platform:
        words.append(f"talos.platform={platform}")
    if config_url:
        words.append(f"talos.config={config_url}")
    return " ".join([*words, *extra.split()])


def user_net(
    *,
    forwards: dict[str, int] | None = None,
    hostfwd: dict[int, int] | None = None,
    imds: bool = False,
    guest_ports: dict[tuple[str, int], int] | None = None,
) -> list[str]:
    """A restricted user network: guest ``ADDR:80`` (or ``(ADDR, PORT)`` in ``guest_ports``) -> loopback
    port; host port -> guest port.

    With ``imds`` the guest network is 169.254.0.0/16 so 169.254.169.254 is reachable (as on EC2).
    """
    opts = ["user", "id=n0", "restrict=on"]
    if imds:
        opts += ["net=169.254.0.0/16", "host=169.254.0.2", "dns=169.254.0.3", "dhcpstart=169.254.0.15"]
    targets = {(addr, 80): port for addr, port in (forwards or {}).items()} | (guest_ports or {})
    for (addr, guest_port), port in targets.items():
        opts.append(f"guestfwd=tcp:{addr}:{guest_port}-cmd:socat - TCP:127.0.0.1:{port}")
    for host_port, guest_port in (hostfwd or {}).items():
        opts.append(f"hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}")
    return ["-netdev", ",".join(opts), "-device", "virtio-net-pci,netdev=n0"]


def copy_disk(src: Path, dest: Path) -> Path:
    """A private, sparse copy of the image (for boots whose disk must persist across reboots)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True)
    return dest


def boot_node(
    image: NodeImage,
    *,
    platform: str | None,
    config_url: str | None = None,
    disk: Path | None = None,
    net: Sequence[str] = (),
    extra: Sequence[str] = (),
    append: str = "",
    memory_mb: int = 1024,
    reboot: bool = False,
    disk_cache: str | None = None,
) -> qemu.Boot:
    """Start QEMU with the image's kernel and initramfs; the disk is the image (snapshot) or ``disk``."""
    args = [*net, *extra]
    if not net:
        args += ["-nic", "none"]
    return qemu.start(
        disk if disk is not None else image.raw,
        snapshot=disk is None,
        kernel=image.kernel,
        initrd=image.initramfs,
        append=node_cmdline(image.cmdline, platform=platform, config_url=config_url, extra=append),
        memory_mb=memory_mb,
        extra=args,
        reboot=reboot,
        disk_cache=disk_cache,
    )


@dataclass(frozen=True)
class ServedNode:
    """A kvm node whose config comes from a loopback server; its osd is at ``endpoint`` on loopback."""

    vm: qemu.Boot
    server: ConfigServer
    endpoint: str


@contextmanager
def served_node(
    image: NodeImage, config: bytes | str, *, disk: Path | None = None, reboot: bool = False
) -> Iterator[ServedNode]:
    """Serve ``config`` (``talos.config=``) and boot a node with osd's port forwarded to loopback."""
    port = free_port()
    with config_server(config) as server:
        net = user_net(forwards={CONFIG_HOST: server.port}, hostfwd={port: 50000})
        with boot_node(
            image, platform="kvm", config_url=server.guest_url, disk=disk, net=net, reboot=reboot
        ) as vm:
            yield ServedNode(vm, server, f"127.0.0.1:{port}")


def phase_times(lines: Sequence[str]) -> dict[str, float]:
    """``phase NAME: done in N ms`` lines -> {name: seconds} (the last boot's values win)."""
    out: dict[str, float] = {}
    for line in lines:
        m = re.search(r"\[talos\] phase (.+): done in (\d+) ms", line)
        if m:
            out[m.group(1)] = int(m.group(2)) / 1000
    return out


def wait_ready(vm: qemu.Boot, timeout: float = 600, since: int = 0) -> tuple[str, float]:
    """Wait for a ``node ready`` line (from console line ``since`` on); returns the hostname and seconds."""
    m, seconds = vm.wait_for(READY, timeout, since)
    return m.group(1), seconds


def osctl(
    talosconfig: Path, endpoint: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real osctl (a subprocess, as an operator would) against one endpoint."""
    exe = Path(sys.executable).with_name("osctl")
    argv = [str(exe), "--talosconfig", str(talosconfig), "-e", endpoint, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def wait_api(talosconfig: Path, endpoint: str, timeout: float = 300) -> float:
    """Poll ``osctl version`` until the node's API answers; returns the seconds it took."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout:
        result = osctl(talosconfig, endpoint, "version")
        if result.returncode == 0:
            return time.monotonic() - start
        last = result.stderr.strip()
        time.sleep(2)
    raise TimeoutError(f"the node API at {endpoint} did not answer within {timeout:.0f} s: {last}")


def with_hostname(config: str, hostname: str) -> str:
    """A generated machine config (``network: {}``) with ``machine.network.hostname`` set."""
    return config.replace("  network: {}\n", f"  network:\n    hostname: {hostname}\n", 1)


def assert_configured(vm: qemu.Boot, hostname: str, source: str, timeout: float = 600) -> None:
    """The checks every platform's boot must pass, read from the console (raises AssertionError)."""
    got, _seconds = wait_ready(vm, timeout)
    out = vm.output
    assert got == hostname, out[-3000:]
    assert re.search(rf"config: \d+ bytes from {re.escape(source)}[^,]*, valid", out), out[-3000:]
    assert f"hostname {hostname} (from " in out and f"hostname now {hostname}" in out
    assert "root: read-only squashfs (a write to / fails: Read-only file system)" in out
    assert re.search(r"disks: /var mounted; machine-id [0-9a-f]{32}", out)
    for phase in ("early mounts", "hardening", "platform", "disks", "network", "config", "apply", "services"):
        assert f"phase {phase}: done in" in out
