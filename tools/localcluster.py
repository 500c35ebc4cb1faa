"""A local cluster made by the real `osctl cluster create`, for the e2e tests and the bench.

:func:`local_cluster` creates the cluster with the CLI, waits for the init node's API server,
yields a :class:`LocalCluster` (talosconfig, forwarded ports, kubeconfig, ``kubectl(...)``, the
nodes, power off/on) and destroys the cluster whatever happened. With ``registry=True`` a loopback
registry is reachable by the nodes at ``10.5.0.1:5000`` and mirrors ``talos.test``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bakery.image import BakeResult
from talos_os.cluster import health, vm
from talos_os.cluster.state import ClusterState, Node
from tools import workload

OSCTL = Path(sys.executable).with_name("osctl")
MIRRORED = "talos.test"
HELLO = f"{MIRRORED}/hello:1"


@dataclass
class LocalCluster:
    """A running cluster and the host's ways in (everything through 127.0.0.1 forwards)."""

    name: str
    state_root: Path
    talosconfig: Path
    kubectl_binary: Path
    registry_port: int | None = None

    @property
    def state(self) -> ClusterState:
        return ClusterState.load(self.state_root / self.name)

    @property
    def nodes(self) -> list[Node]:
        return self.state.nodes

    @property
    def init(self) -> Node:
        return self.state.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.state.workers

    def osd(self, node: Node) -> str:
        """``127.0.0.1:PORT`` of the node's forwarded osd."""
        return self.state.endpoint(node, "osd")

    @property
    def api_url(self) -> str:
        return f"https://{self.state.endpoint(self.init, 'api')}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig from osd (server: the init node's forwarded 6443)."""
        return health.Cluster(self.state).kubeconfig()

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``osctl`` with this cluster's talosconfig and state directory."""
        argv = [str(OSCTL), "--talosconfig", str(self.talosconfig), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def osctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``osctl --context NAME ...`` (endpoints: the control planes' forwarded osd ports)."""
        return self.cli("--context", self.name, *args, timeout=timeout)

    def health(self) -> subprocess.CompletedProcess[str]:
        return self.cli("health", "--cluster", self.name, "--state", str(self.state_root))

    def kubectl(
        self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            str(self.kubectl_binary),
            "--kubeconfig",
            str(self.kubeconfig),
            "--request-timeout=60s",
            *args,
        ]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result

    def wait_api(self, timeout: float = 2400) -> float:
        """Wait for the init node's API server to answer /readyz through its forward."""
        return self.wait(
            "the init node's API server /readyz",
            lambda: self.kubectl("get", "--raw", "/readyz", check=False).stdout == "ok",
            timeout,
        )

    def serial(self, node: Node) -> str:
        return (self.state.node_dir(node) / "serial.log").read_text(errors="replace")

    def stop(self, node: Node) -> bool:
        """Power the node off (its QEMU is killed, like pulling the plug)."""
        return vm.stop(self.state, node)

    def start(self, node: Node) -> int:
        """Power it on again: same disk, same MAC, so the same address and identity."""
        return vm.start(self.state, node)

    def wait(self, what: str, check: Callable[[], bool], timeout: float, every: float = 15.0) -> float:
        """Poll ``check`` until it holds; returns the seconds it took, or raises naming ``what``."""
        start = time.monotonic()
        said = start
        while time.monotonic() - start < timeout:
            with contextlib.suppress(Exception):
                if check():
                    return time.monotonic() - start
            if time.monotonic() - said > 60:
                print(f"    ... waiting for {what} ({time.monotonic() - start:.0f} s)", flush=True)
                said = time.monotonic()
            time.sleep(every)
        tails = "\n".join(f"--- {n.name}\n{self.serial(n)[-1500:]}" for n in self.nodes)
        raise TimeoutError(f"{what} did not happen within {timeout:.0f} s; serial tails:\n{tails}")


@contextlib.contextmanager
def local_cluster(
    image: BakeResult,
    workdir: Path,
    *,
    name: str,
    controlplanes: int = 1,
    workers: int = 2,
    registry: bool = True,
    wait_api: bool = True,
    api_timeout: float = 2400,
) -> Iterator[LocalCluster]:
    """Create a cluster with the CLI, wait for the init node's osd (and with ``wait_api`` its API
    server's /readyz), yield it, destroy it."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        extra: list[str] = []
        port = None
        if registry:
            reg = stack.enter_context(workload.registry())
            port = reg.port
            extra = [
                "--host-forward",
                f"5000={port}",
                "--registry-mirror",
                f"{MIRRORED}=http://10.5.0.1:5000",
            ]
        c = LocalCluster(
            name, workdir / "clusters", workdir / "talosconfig", image.raw.parent / "kubectl", port
        )
        created = subprocess.run(
            [str(OSCTL), "--talosconfig", str(c.talosconfig), "cluster", "create", "--name", name,
             "--controlplanes", str(controlplanes), "--workers", str(workers), "--image", str(image.raw),
             "--state", str(c.state_root), "--memory", "4096", "--memory-workers", "2048",
             "--cpus-workers", "1", "--no-wait", *extra],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        print(created.stderr, flush=True)
        try:
            assert created.returncode == 0, created.stderr
            c.wait("the init node's osd", lambda: c.osctl("version").returncode == 0, 900, every=5)
            if wait_api:
                c.wait_api(api_timeout)
            yield c
        finally:
            subprocess.run(
                [str(OSCTL), "--talosconfig", str(c.talosconfig), "cluster", "destroy", "--name", name,
                 "--state", str(c.state_root)],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip


def json_of(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
