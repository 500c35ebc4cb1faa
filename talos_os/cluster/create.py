"""``osctl cluster create``: check everything, then network, forwards, VMs, talosconfig, and wait.

Every refusal a user can meet (bad name, name taken, no image, not enough memory, missing tools,
not root) is raised by :func:`preflight` before anything is started or written. Once the cluster
directory exists, any failure or Ctrl-C tears down what was made, exactly as ``destroy`` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from talos_os import pki, talosconfig
from talos_os.cluster import destroy as destroy_mod
from talos_os.cluster import forward, netns, vm
from talos_os.cluster.state import (
    API_PORT,
    DEFAULT_CIDR,
    ClusterError,
    ClusterState,
    Node,
    check_memory,
    forward_targets,
    mem_available_mb,
    netns_name,
    plan_nodes,
)
from talos_os.config.generate import FILE_NAMES, GenerateError, generate, validate_cluster_name

Say = Callable[[str], None]
TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "dnsmasq": "dnsmasq-base",
    "ip": "iproute2",
}


@dataclass
class CreateOptions:
    name: str
    root: Path
    controlplanes: int = 1
    workers: int = 1
    cpus: int = 2
    worker_cpus: int | None = None
    memory_mb: int = 4096
    worker_memory_mb: int = 2048
    disk_mb: int = 8192
    cidr: str = DEFAULT_CIDR
    image: Path | None = None
    config_dir: Path | None = None
    talosconfig: Path = field(default_factory=lambda: talosconfig.resolve_path())
    bake_args: list[str] = field(default_factory=list)
    host_forwards: dict[int, int] = field(default_factory=dict)  # gateway port -> host 127.0.0.1 port
    registry_mirrors: dict[str, list[str]] = field(default_factory=dict)


def preflight(opts: CreateOptions, *, available_mb: int | None = None, euid: int | None = None) -> list[Node]:
    """Every check that can fail before anything starts; returns the planned nodes."""
    try:
        validate_cluster_name(opts.name)
    except GenerateError as exc:
        raise ClusterError(str(exc)) from None
    if (os.geteuid() if euid is None else euid) != 0:
        raise ClusterError("osctl cluster create needs root (network namespaces, taps): run it as root")
    directory = opts.root / opts.name
    if directory.exists():
        raise ClusterError(
            f"cluster {opts.name} already exists ({directory}): destroy it first with "
            f"`osctl cluster destroy --name {opts.name}`, or pick another --name"
        )
    if netns.exists(netns_name(opts.name)):
        raise ClusterError(
            f"network namespace {netns_name(opts.name)} is in use: pick another --name, or delete it "
            f"with `ip netns delete {netns_name(opts.name)}` if it is a leftover"
        )
    nodes = plan_nodes(
        opts.name,
        controlplanes=opts.controlplanes,
        workers=opts.workers,
        cidr=opts.cidr,
        cpus=opts.cpus,
        worker_cpus=opts.worker_cpus,
        memory_mb=opts.memory_mb,
        worker_memory_mb=opts.worker_memory_mb,
        disk_mb=opts.disk_mb,
    )
    if opts.image is not None:
        vm.find_image(opts.image)
    if opts.config_dir is not None:
        missing = [n for n in FILE_NAMES if not (opts.config_dir / n).is_file()]
        if missing:
            raise ClusterError(
                f"--config-dir {opts.config_dir} lacks {', '.join(missing)}: "
                "`osctl config generate NAME https://10.5.0.2:6443 -o DIR` writes all of them"
            )
    check_memory(nodes, mem_available_mb() if available_mb is None else available_mb)
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise ClusterError(f"{tool} is not installed: apt-get install {package}")
    return nodes


def bake(bake_args: list[str], say: Say) -> Path:
    """Bake (or take from the step cache) the kvm image with the bakery's own CLI; returns the raw image."""
    exe = Path(sys.executable).with_name("talos-bake")
    argv = [str(exe) if exe.exists() else "talos-bake", "raw", "--platform", "kvm", "-o", "json", *bake_args]
    say(f"baking the image: {' '.join(argv[1:])}")
    try:
        result = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    except FileNotFoundError:
        raise ClusterError("talos-bake is not installed here: pass --image PATH of a baked image") from None
    if result.returncode != 0:
        raise ClusterError("the bake failed (its error is above): fix it, or pass --image PATH")
    return Path(json.loads(result.stdout)["raw"])


def cluster_configs(opts: CreateOptions, nodes: list[Node]) -> dict[str, str]:
    """init/controlplane/worker configs and the talosconfig: generated, or read from --config-dir."""
    if opts.config_dir is not None:
        return {n: (opts.config_dir / n).read_text() for n in FILE_NAMES}
    init = nodes[0]
    sans = ["127.0.0.1", *(n.address for n in nodes if n.control_plane)]
    return generate(opts.name, f"https://{init.address}:{API_PORT}", additional_sans=sans).files()


def node_config(configs: dict[str, str], node: Node, mirrors: dict[str, list[str]] | None = None) -> str:
    """The role's config with the node's host name (and the registry mirrors asked for)."""
    doc = yaml.safe_load(configs[f"{node.role}.yaml"])
    doc["machine"]["network"] = {**(doc["machine"].get("network") or {}), "hostname": node.name}
    if mirrors:
        kubernetes = doc["cluster"].setdefault("kubernetes", {})
        kubernetes["registryMirrors"] = {**(kubernetes.get("registryMirrors") or {}), **mirrors}
    return yaml.safe_dump(doc, sort_keys=False, width=1 << 20)


def merge_context(state: ClusterState, path: Path) -> str:
    """Merge the cluster's context (endpoints: the forwarded control-plane osd ports) into ``path``."""
    generated = talosconfig.loads(state.file("configs/talosconfig").read_text())
    generated.set_endpoints([state.endpoint(n, "osd") for n in state.control_planes])
    generated.set_nodes([])
    user = talosconfig.load_or_empty(path)
    user.merge(generated)
    talosconfig.save(user, path)
    return str(user.context)


def build(opts: CreateOptions, nodes: list[Node], image: vm.Image, say: Say) -> ClusterState:
    """Make the cluster (directory, configs, network, forwards, disks, VMs, context)."""
    directory = opts.root / opts.name
    state = ClusterState(
        name=opts.name,
        directory=directory,
        cidr=opts.cidr,
        image=str(image.path),
        nodes=nodes,
    )
    opts.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700)
    state.save()
    configs = cluster_configs(opts, nodes)
    state.file("configs").mkdir(mode=0o700)
    for fname, text in configs.items():
        pki.write_secret(state.file(f"configs/{fname}"), text.encode())
    for node in nodes:
        state.node_dir(node).mkdir(mode=0o700, parents=True)
        pki.write_secret(
            state.node_dir(node) / "config.yaml", node_config(configs, node, opts.registry_mirrors).encode()
        )
    say(
        f"network: namespace {state.netns}, bridge {state.gateway}/{state.prefixlen}, {len(nodes)} taps, DHCP"
    )
    netns.create(state)
    netns.start_dnsmasq(state)
    state.host_forwards = {f"{state.gateway}:{g}": h for g, h in opts.host_forwards.items()}
    _pid, state.forwards = forward.start(state.netns, forward_targets(nodes), directory, state.host_forwards)
    state.save()
    for node in nodes:
        vm.create_disk(state, node, image)
        pid = vm.start(state, node)
        say(f"started {node.name} ({node.role}, {node.address}, {node.memory_mb} MiB, pid {pid})")
    state.talosconfig = str(opts.talosconfig)
    state.context = merge_context(state, opts.talosconfig)
    state.save()
    return state


def _never_fails(say: Say) -> Say:
    """``say`` that drops what it cannot write (EPIPE once the reader of stderr is gone)."""

    def said(line: str) -> None:
        with contextlib.suppress(OSError):
            say(line)

    return said


def create(opts: CreateOptions, say: Say, wait: Callable[[ClusterState], None] | None = None) -> ClusterState:
    """Preflight, bake if needed, build, then ``wait`` (until healthy); any failure cleans up."""
    nodes = preflight(opts)
    image = vm.find_image(opts.image if opts.image is not None else bake(opts.bake_args, say))
    directory = opts.root / opts.name
    try:
        state = build(opts, nodes, image, say)
        if wait is not None:
            wait(state)
    except TimeoutError:
        raise  # the cluster stays for inspection; the caller says how to destroy it
    except BaseException:
        quiet = _never_fails(say)  # a closed stderr (the caller went away) must not stop the cleanup
        quiet(f"cleaning up cluster {opts.name}")
        destroy_mod.destroy(directory, opts.name, say=quiet)
        raise
    return state
