"""What a node does for Kubernetes before its services start: kernel knobs, mounts, directories
and containerd's configuration. Side effects go through the callables the init passes in, so the
host tests run it against a temporary root.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from talos_os import pki
from talos_os.config import MachineConfig
from talos_os.kubernetes import containerd, kubeadm

# Pod networking needs forwarding and bridged traffic seen by iptables; the rest are the values the
# kubelet checks with protectKernelDefaults (CIS 4.2.6) and refuses to start without.
SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
STATE_DIRS: dict[str, int] = {
    "var/lib/kubelet": 0o700,
    "var/lib/containerd": 0o711,
    "var/lib/etcd": 0o700,
    "var/log/pods": 0o755,
    "var/log/containers": 0o755,
    "etc/kubernetes/manifests": 0o755,
    "etc/cni/net.d": 0o755,
}
KUBELET_DIR = "/var/lib/kubelet"
KUBELET_RESOLV = Path("/run/talos/kubernetes/resolv.conf")
CTR = ("/usr/bin/ctr", "--address", containerd.SOCKET, "--namespace", "k8s.io")


@dataclass(frozen=True)
class Effects:
    """The node's side effects: sysctl writes and mounts."""

    write_sysctls: Callable[[dict[str, str]], list[str]]
    make_shared: Callable[[str, bool], None]  # (path, bind onto itself first)


def prepare(
    cfg: MachineConfig, effects: Effects, address: str, host_resolv: str, root: Path = Path("/")
) -> list[str]:
    """Sysctls, shared mount propagation for the kubelet, state directories on /var, containerd's
    files and the pods' resolv.conf; returns the sysctls this kernel lacks."""
    absent = effects.write_sysctls(SYSCTLS)
    for rel, mode in STATE_DIRS.items():
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    effects.make_shared("/", False)  # containers' mounts (volumes, bidirectional) propagate to the host
    effects.make_shared(KUBELET_DIR, True)
    write_containerd_files(cfg, root)
    resolv = root / str(KUBELET_RESOLV).lstrip("/")
    resolv.parent.mkdir(parents=True, exist_ok=True)
    pki.write_public(resolv, kubelet_resolv_conf(host_resolv, address).encode())
    return absent


def kubelet_resolv_conf(host: str, address: str) -> str:
    """The resolv.conf pods with ``dnsPolicy: Default`` (CoreDNS among them) get: the node's own, or,
    on a node without an upstream name server, one naming the node's address, where nothing answers
    DNS. CoreDNS refuses to start with no upstream at all, and must not be pointed at a loopback
    address (inside its pod that is itself, which its loop check treats as fatal); this way cluster
    names resolve and other names fail at once."""
    if any(line.split()[:1] == ["nameserver"] for line in host.splitlines()):
        return host
    return f"# written by the talos-os init: this node has no upstream name server\nnameserver {address}\n"


def write_containerd_files(cfg: MachineConfig, root: Path = Path("/")) -> list[Path]:
    """config.toml and one hosts.toml per mirrored registry, fresh from the config at every boot."""
    base = root / str(containerd.CONFIG_DIR).lstrip("/")
    base.mkdir(parents=True, exist_ok=True, mode=0o755)
    files = {containerd.CONFIG_PATH: containerd.config_toml()}
    files.update(
        containerd.hosts_files({k: list(v) for k, v in cfg.cluster.kubernetes.registry_mirrors.items()})
    )
    written = []
    for path, text in files.items():
        target = root / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        pki.write_public(target, text.encode())
        written.append(target)
    return written


def write_files(files: list[kubeadm.File], root: Path = Path("/")) -> None:
    """Write rendered files atomically with their modes (secrets 0600)."""
    for f in files:
        target = root / str(f.path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.mode & 0o077:
            pki.write_public(target, f.content)
            os.chmod(target, f.mode)
        else:
            pki.write_secret(target, f.content)


def stop_pods(
    run: Callable[[list[str]], subprocess.CompletedProcess[bytes]],
    log: Callable[[str], None],
    grace: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Stop every Kubernetes container before containerd and /var go away: SIGTERM (etcd flushes and
    exits cleanly), up to ``grace`` seconds, then SIGKILL. Run after the kubelet stopped (it would
    restart them). Returns how many were running."""

    def running() -> list[str]:
        out = run([*CTR, "tasks", "ls"])
        if out.returncode != 0:
            return []
        rows = [line.split() for line in out.stdout.decode().splitlines()[1:]]
        return [row[0] for row in rows if len(row) >= 3 and row[2] == "RUNNING"]

    first = running()
    for task in first:
        run([*CTR, "tasks", "kill", "--signal", "SIGTERM", task])
    waited = 0.0
    while (left := running()) and waited < grace:
        sleep(1.0)
        waited += 1.0
    for task in left:
        run([*CTR, "tasks", "kill", "--signal", "SIGKILL", task])
    if first:
        log(f"kubernetes: stopped {len(first)} containers ({len(left)} killed after {grace:.0f} s)")
    return len(first)
