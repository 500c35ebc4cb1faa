"""Helpers of the osd tests: the loopback node's parts, client connections, talosconfigs."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from talos_os import pki, talosconfig
from talos_os.api.gen import node_pb2_grpc as pb_grpc
from talos_os.config import MachineConfig
from talos_os.init.control import ControlServer
from talos_os.init.supervisor import LogBuffer, State, Supervisor
from talos_os.lib.cgroups import CgroupTree
from talos_os.osd.server import Osd, Settings

T = 10.0
KMSG_RECORDS = [
    "6,1,0,-;Linux version 6.1.0-talos (builder@talos) #1 SMP",
    " SUBSYSTEM=cpu",
    "4,2,1500000,-;ACPI: something odd",
    "6,3,2250001,-;virtio_net virtio0 eth0: link up",
]


@dataclass
class Cluster:
    """One generated cluster: the init node's config (OS CA with its key) and the worker's."""

    config: MachineConfig
    config_text: str
    worker_text: str
    ca: pki.CertKey

    def client(self, role: str = pki.ROLE_ADMIN, name: str = "tester") -> pki.CertKey:
        return pki.issue_client_certificate(self.ca, name, role)


@dataclass
class Node:
    """Everything behind one loopback osd."""

    root: Path
    osd: Osd
    supervisor: Supervisor
    control: ControlServer
    settings: Settings
    trigger: Path
    actions: list[str] = field(default_factory=list)
    cgroups: bool = False
    ticks: int = 0
    public: Path = Path("/nonexistent")  # a world-readable tree among the reader's trees

    @property
    def port(self) -> int:
        return self.osd.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tick(self, count: int) -> None:
        """Make the ticker print ``count`` more lines."""
        self.ticks += count
        self.trigger.write_text(str(self.ticks))

    def wait_running(self, service: str) -> int:
        """Wait until ``service`` runs its own program (past the cgroup-joining exec); its pid."""
        deadline = time.monotonic() + T
        while True:
            assert time.monotonic() < deadline, f"{service} is not running its program"
            pid = self.supervisor.stats()[service]
            if pid is not None and self.supervisor.info(service).state == State.RUNNING:
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    argv = []
                if argv[1:3] != [b"-I", b"-S"]:
                    return pid
            time.sleep(0.02)

    def wait_log_lines(self, service: str, count: int) -> None:
        buf: LogBuffer = self.supervisor.logs(service)
        deadline = time.monotonic() + T
        while buf.cursor < count:
            assert time.monotonic() < deadline, f"{service} logged {buf.cursor} lines, expected {count}"
            buf.wait_for_more(buf.cursor, 0.5)


def rpc_error(call: object) -> grpc.RpcError:
    """The error ``call()`` raises (an iterator it returns is drained first)."""
    with pytest.raises(grpc.RpcError) as info:
        if callable(call):
            result = call()
            if isinstance(result, Iterator):
                list(result)
    return info.value


def remove_groups(tree: CgroupTree) -> None:
    deadline = time.monotonic() + T
    while tree.remove_all() and time.monotonic() < deadline:
        for p in tree.root.iterdir():
            for pid in tree.pids(p.name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        time.sleep(0.05)


@contextlib.contextmanager
def connect(
    node: Node,
    cert: pki.CertKey | None,
    *,
    ca_pem: bytes | None = None,
    host: str = "127.0.0.1",
) -> Iterator[pb_grpc.NodeStub]:
    """A stub over mutual TLS as a given client certificate (None: present none)."""
    ca = ca_pem if ca_pem is not None else node.osd.ca_pem
    creds = (
        grpc.ssl_channel_credentials(ca)
        if cert is None
        else grpc.ssl_channel_credentials(ca, cert.key_pem, cert.cert_pem)
    )
    with grpc.secure_channel(f"{host}:{node.port}", creds) as ch:
        yield pb_grpc.NodeStub(ch)


def write_talosconfig(
    path: Path, ca: pki.CertKey, client: pki.CertKey, endpoints: list[str], nodes: list[str] | None = None
) -> Path:
    """A talosconfig with one context ("test") pointing at loopback osd instances."""
    ctx = talosconfig.Context(
        endpoints=endpoints,
        nodes=nodes or [],
        ca=ca.b64_crt(),
        crt=client.b64_crt(),
        key=client.b64_key(),
    )
    talosconfig.save(talosconfig.TalosConfig(context="test", contexts={"test": ctx}), path)
    return path
