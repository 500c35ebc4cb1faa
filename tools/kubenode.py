"""Boot an ``init`` node that bootstraps Kubernetes, and talk to it with the payload's kubectl.

Shared by the Kubernetes e2e tests, ``make demo`` and ``make bench``. The node lives on QEMU's
restricted user network (guest address 10.0.2.15, the cluster endpoint), its osd (50000) and API
server (6443) are forwarded to loopback ports, and a local registry can be reached by the guest as
``10.0.2.101:5000``. Under software emulation everything takes minutes: timeouts are generous
and every wait says what it waits for.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from bakery import qemu
from talos_os.config.generate import generate
from tools import nodevm

GUEST_ADDRESS = "10.0.2.15"  # QEMU's user network gives its one guest this address
REGISTRY_HOST = "10.0.2.101"  # the guest's name for the loopback registry
MIRRORED = "talos.test"  # the registry name workloads use; the node pulls it through the mirror
HOSTNAME = "k8s-init"


ENDPOINT = f"https://{GUEST_ADDRESS}:6443"


def init_config(
    workdir: Path, *, registry: bool, init: str | None = None, talosconfig: str | None = None
) -> tuple[str, Path]:
    """An init node's config for a one-node cluster at 10.0.2.15 (generated, or ``init`` as given), with
    its host name and registry mirror set, and the talosconfig beside it."""
    if init is None or talosconfig is None:
        generated = generate("e2e", ENDPOINT)
        init, talosconfig = generated.init, generated.talosconfig
    doc = yaml.safe_load(init)
    doc["machine"]["network"] = {"hostname": HOSTNAME}
    if registry:
        doc["cluster"]["kubernetes"]["registryMirrors"] = {MIRRORED: [f"http://{REGISTRY_HOST}:5000"]}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "talosconfig"
    path.write_text(talosconfig)
    config = yaml.safe_dump(doc, sort_keys=False)
    (workdir / "init.yaml").write_text(config)
    return config, path


@dataclass
class KubeNode:
    """A booted init node and the host's ways in: osd, the API server, kubectl."""

    vm: qemu.Boot
    osd: str
    api_port: int
    talosconfig: Path
    workdir: Path
    kubectl_binary: Path
    kubeconfig: Path | None = None

    def osctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return nodevm.osctl(self.talosconfig, self.osd, *args, timeout=timeout)

    def fetch_kubeconfig(self) -> Path:
        """``osctl kubeconfig``, pointed at the forwarded API server port."""
        path = self.workdir / "kubeconfig"
        result = self.osctl("kubeconfig", str(path))
        if result.returncode != 0:
            raise RuntimeError(f"osctl kubeconfig failed: {result.stderr.strip()}")
        doc = yaml.safe_load(path.read_text())
        for cluster in doc["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.api_port}"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.kubeconfig = path
        return path

    def kubectl(
        self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        kubeconfig = self.kubeconfig or self.fetch_kubeconfig()
        argv = [str(self.kubectl_binary), "--kubeconfig", str(kubeconfig), "--request-timeout=60s", *args]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result

    def wait(self, what: str, check: Callable[[], bool], timeout: float, every: float = 15.0) -> float:
        """Poll ``check`` until it holds; returns the seconds it took, or raises with the console tail."""
        start = time.monotonic()
        last_said = 0.0
        while time.monotonic() - start < timeout:
            with contextlib.suppress(Exception):
                if check():
                    return time.monotonic() - start
            if time.monotonic() - last_said > 60:
                print(f"    ... waiting for {what} ({time.monotonic() - start:.0f} s)", flush=True)
                last_said = time.monotonic()
            time.sleep(every)
        raise TimeoutError(
            f"{what} did not happen within {timeout:.0f} s; console tail:\n{self.vm.output[-4000:]}"
        )

    def node_ready(self) -> bool:
        out = self.kubectl("get", "node", HOSTNAME, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conditions = json.loads(out.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def wait_kubernetes(self, timeout: float = 2400) -> dict[str, float]:
        """Node ready, osd answering, the API server answering, the node Ready: seconds for each."""
        times = {}
        _host, times["node ready"] = nodevm.wait_ready(self.vm, 900)
        times["osd"] = nodevm.wait_api(self.talosconfig, self.osd, 600)
        times["api server"] = self.wait(
            "the API server's /readyz",
            lambda: self.kubectl("get", "--raw", "/readyz", check=False).stdout == "ok",
            timeout,
        )
        times["node Ready"] = self.wait(f"node {HOSTNAME} Ready", self.node_ready, timeout)
        return times


@contextlib.contextmanager
def kube_node(
    image: nodevm.NodeImage,
    kubectl_binary: Path,
    workdir: Path,
    *,
    registry_port: int | None = None,
    disk_size: str = "8G",
    memory_mb: int = 4096,
    disk: Path | None = None,
    configs: tuple[str, str] | None = None,
) -> Iterator[KubeNode]:
    """Boot an init node on its own persistent disk (grown to ``disk_size``); yields when QEMU runs.

    ``configs`` is (init config, talosconfig) of a cluster generated for :data:`ENDPOINT`; by default
    a new cluster is generated."""
    init, talos = configs if configs is not None else (None, None)
    config, talosconfig = init_config(
        workdir, registry=registry_port is not None, init=init, talosconfig=talos
    )
    if disk is None:
        disk = nodevm.copy_disk(image.raw, workdir / "disk.raw")
        subprocess.run(["truncate", "-s", disk_size, str(disk)], check=True)
    osd_port, api_port = nodevm.free_port(), nodevm.free_port()
    guest_ports = {(REGISTRY_HOST, 5000): registry_port} if registry_port is not None else {}
    with nodevm.config_server(config) as server:
        net = nodevm.user_net(
            forwards={nodevm.CONFIG_HOST: server.port},
            hostfwd={osd_port: 50000, api_port: 6443},
            guest_ports=guest_ports,
        )
        with nodevm.boot_node(
            image,
            platform="kvm",
            config_url=server.guest_url,
            disk=disk,
            net=net,
            memory_mb=memory_mb,
            reboot=True,
            # etcd fsyncs every write; a throwaway test disk need not wait for the host's disk to flush
            disk_cache="unsafe",
        ) as vm:
            yield KubeNode(vm, f"127.0.0.1:{osd_port}", api_port, talosconfig, workdir, kubectl_binary)
