"""containerd's configuration for the CRI, rendered from the machine config.

cgroupfs (there is no systemd on the node), the baked pause image as the sandbox image, Debian's
CNI plugins, and registry mirrors from ``cluster.kubernetes.registryMirrors`` as containerd
``hosts.toml`` files. The files live under /run: the root is read-only and they are rewritten
at every boot from the config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from talos_os.kubernetes import versions

CONFIG_DIR = PurePosixPath("/run/talos/containerd")
CONFIG_PATH = CONFIG_DIR / "config.toml"
HOSTS_DIR = CONFIG_DIR / "certs.d"
SOCKET = "/run/containerd/containerd.sock"
CNI_BIN_DIR = "/usr/lib/cni"
CNI_CONF_DIR = "/etc/cni/net.d"
# Plugins the node never uses: fewer goroutines and less memory under emulation.
DISABLED_PLUGINS = (
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
)


def _q(value: str) -> str:
    """A TOML basic string (JSON's escaping is a subset TOML accepts)."""
    return json.dumps(value)


def config_toml(sandbox_image: str = versions.pause_image()) -> str:
    """containerd 1.6's config (version 2) for a Kubernetes node."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    disabled = ", ".join(_q(p) for p in DISABLED_PLUGINS)
    return "\n".join(
        [
            "version = 2",
            'root = "/var/lib/containerd"',
            'state = "/run/containerd"',
            f"disabled_plugins = [{disabled}]",
            "",
            "[grpc]",
            f"  address = {_q(SOCKET)}",
            "",
            f"[{cri}]",
            f"  sandbox_image = {_q(sandbox_image)}",
            "  enable_selinux = false",
            "  max_container_log_line_size = 16384",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            "  discard_unpacked_layers = false",
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            '  BinaryName = "/usr/sbin/runc"',
            f"[{cri}.cni]",
            f"  bin_dir = {_q(CNI_BIN_DIR)}",
            f"  conf_dir = {_q(CNI_CONF_DIR)}",
            f"[{cri}.registry]",
            f"  config_path = {_q(str(HOSTS_DIR))}",
            "",
        ]
    )


def hosts_toml(mirrors: Sequence[str]) -> str:
    """One registry's mirrors, tried in order; the registry itself stays the fallback."""
    lines = []
    for url in mirrors:
        lines += [f"[host.{_q(url.rstrip('/'))}]", '  capabilities = ["pull", "resolve"]']
        if url.startswith("http://"):
            lines.append("  skip_verify = true")
        lines.append("")
    return "\n".join(lines)


def hosts_files(registry_mirrors: Mapping[str, Sequence[str]]) -> dict[PurePosixPath, str]:
    """``certs.d/<registry>/hosts.toml`` for each mirrored registry (``docker.io`` included)."""
    return {
        HOSTS_DIR / registry / "hosts.toml": hosts_toml(mirrors)
        for registry, mirrors in sorted(registry_mirrors.items())
    }
