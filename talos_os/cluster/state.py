"""A cluster's layout under ``~/.talos/clusters/NAME/`` and the pure allocation of its nodes.

Everything a later ``show``, ``health`` or ``destroy`` needs is in ``state.json``, so those
commands work from another shell or after the creating process was killed.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from talos_os.lib.atomic import write_atomic

ENV_STATE = "TALOS_CLUSTERS_DIR"
DEFAULT_STATE = Path("~/.talos/clusters")
DEFAULT_CIDR = "10.5.0.0/24"
NETNS_PREFIX = "talos-"
BRIDGE = "br0"
OSD_PORT = 50000
API_PORT = 6443
ETCD_PORT = 2379
ROLES = ("init", "controlplane", "worker")


class ClusterError(Exception):
    """A user-facing problem with a cluster: one sentence naming the thing and the fix."""


def state_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--state`` beats ``$TALOS_CLUSTERS_DIR`` beats ``~/.talos/clusters``."""
    raw = explicit or os.environ.get(ENV_STATE) or DEFAULT_STATE
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class Node:
    """One node: its name (also its host name), role, place on the bridge and size."""

    name: str
    role: str
    index: int
    address: str
    mac: str
    tap: str
    memory_mb: int
    cpus: int
    disk_mb: int

    @property
    def control_plane(self) -> bool:
        return self.role != "worker"


@dataclass
class ClusterState:
    """What ``state.json`` holds; ``forwards`` maps ``NODE:osd|api|etcd`` to a 127.0.0.1 port."""

    name: str
    directory: Path
    cidr: str
    image: str
    nodes: list[Node]
    forwards: dict[str, int] = field(default_factory=dict)
    host_forwards: dict[str, int] = field(default_factory=dict)  # "GATEWAY:PORT" -> host 127.0.0.1 port
    talosconfig: str | None = None
    context: str | None = None

    # ---- paths ------------------------------------------------------------------------------------------
    @property
    def netns(self) -> str:
        return netns_name(self.name)

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.cidr).hosts()))

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen

    @property
    def network_address(self) -> str:
        return str(ipaddress.ip_network(self.cidr).network_address)

    @property
    def netmask(self) -> str:
        return str(ipaddress.ip_network(self.cidr).netmask)

    def node_dir(self, node: Node) -> Path:
        return self.directory / "nodes" / node.name

    def file(self, name: str) -> Path:
        return self.directory / name

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(
            f"cluster {self.name} has no node {name!r} (it has {', '.join(n.name for n in self.nodes)})"
        )

    @property
    def control_planes(self) -> list[Node]:
        return [n for n in self.nodes if n.control_plane]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.control_plane]

    def endpoint(self, node: Node, what: str) -> str:
        """``127.0.0.1:PORT`` of a node's forwarded ``osd``, ``api`` or ``etcd`` port."""
        key = forward_key(node.name, what)
        if key not in self.forwards:
            raise ClusterError(f"cluster {self.name} forwards no {what} port for {node.name}")
        return f"127.0.0.1:{self.forwards[key]}"

    # ---- persistence ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["directory"] = str(self.directory)
        return data

    def save(self) -> None:
        """Write ``state.json`` atomically (temp name, then rename)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.file("state.json"), (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, directory: Path) -> ClusterState:
        path = directory / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterError(
                f"no cluster state at {path}: `osctl cluster show` lists the clusters there are"
            ) from None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read cluster state {path} ({exc}); destroy the cluster") from None
        data["directory"] = Path(data["directory"])
        data["nodes"] = [Node(**n) for n in data["nodes"]]
        known = {f.name for f in fields(cls)}  # an older state's extra keys (kernel, ...) are ignored
        return cls(**{k: v for k, v in data.items() if k in known})


def netns_name(cluster: str) -> str:
    return f"{NETNS_PREFIX}{cluster}"


def forward_key(node: str, what: str) -> str:
    return f"{node}:{what}"


def node_name(cluster: str, role: str, number: int) -> str:
    """``NAME-controlplane-1`` (the init node is the first control plane), ``NAME-worker-1``."""
    return f"{cluster}-{'worker' if role == 'worker' else 'controlplane'}-{number}"


def plan_nodes(
    cluster: str,
    *,
    controlplanes: int,
    workers: int,
    cidr: str = DEFAULT_CIDR,
    cpus: int = 2,
    worker_cpus: int | None = None,
    memory_mb: int = 4096,
    worker_memory_mb: int = 2048,
    disk_mb: int = 8192,
) -> list[Node]:
    """Nodes in boot order: the init node, the other control planes, the workers.

    Addresses follow the gateway (``.1``): ``.2`` is the init node. MACs are derived from the
    address so dnsmasq's static leases give each node the same address across restarts.
    """
    if controlplanes < 1:
        raise ClusterError("a cluster needs at least one control plane: pass --controlplanes 1 or more")
    if workers < 0:
        raise ClusterError("--workers cannot be negative")
    network = ipaddress.ip_network(cidr)
    if network.version != 4:
        raise ClusterError(f"cluster network {cidr} must be IPv4, like {DEFAULT_CIDR}")
    hosts = list(network.hosts())
    total = controlplanes + workers
    if total + 1 > len(hosts) or total > 250:
        raise ClusterError(f"{total} nodes do not fit in {cidr}: use a larger --cidr or fewer nodes")
    nodes = []
    for i in range(total):
        worker = i >= controlplanes
        role = "worker" if worker else ("init" if i == 0 else "controlplane")
        number = i - controlplanes + 1 if worker else i + 1
        address = hosts[i + 1]
        octets = address.packed
        nodes.append(
            Node(
                name=node_name(cluster, role, number),
                role=role,
                index=i,
                address=str(address),
                mac="52:54:00:{:02x}:{:02x}:{:02x}".format(*octets[1:]),
                tap=f"tap{i}",
                memory_mb=worker_memory_mb if worker else memory_mb,
                cpus=(worker_cpus or cpus) if worker else cpus,
                disk_mb=disk_mb,
            )
        )
    return nodes


def forward_targets(nodes: list[Node]) -> dict[str, tuple[str, int]]:
    """What the forwarder exposes: every node's osd; each control plane's API server and etcd."""
    targets: dict[str, tuple[str, int]] = {}
    for node in nodes:
        targets[forward_key(node.name, "osd")] = (node.address, OSD_PORT)
        if node.control_plane:
            targets[forward_key(node.name, "api")] = (node.address, API_PORT)
            targets[forward_key(node.name, "etcd")] = (node.address, ETCD_PORT)
    return targets


def existing_clusters(root: Path) -> list[str]:
    """Names of the clusters under ``root`` (directories holding a state.json)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "state.json").exists())


def mem_available_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise ClusterError(f"{meminfo} has no MemAvailable line")


def check_memory(nodes: list[Node], available_mb: int, reserve_mb: int = 1024) -> None:
    """Refuse a cluster whose VMs' memory does not fit what the machine has free (minus a reserve)."""
    need = sum(n.memory_mb for n in nodes)
    if need > available_mb - reserve_mb:
        raise ClusterError(
            f"the cluster's {len(nodes)} nodes need {need} MiB but only {available_mb} MiB is available "
            f"(keeping {reserve_mb} MiB for the host): lower --memory/--memory-workers or use fewer nodes"
        )
