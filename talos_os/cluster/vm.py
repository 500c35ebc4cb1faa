"""One QEMU per node, started inside the cluster's namespace and detached from osctl.

Each node boots the shared image through a qcow2 overlay of its own (never a copy), gets its
machine config over fw_cfg (``opt/talos/config``, which the kvm platform reads), writes its serial
console to ``serial.log`` (appended across restarts) and leaves a pid file. A node boots from its
disk through the firmware and GRUB, as a machine does: that is what lets ``osctl upgrade`` and
``osctl rollback`` switch its slot (a kernel given to QEMU directly would boot ROOT-A every time).
The image must be baked for the kvm platform without a config URL: the config comes over fw_cfg.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from talos_os.cluster.netns import run
from talos_os.cluster.state import ClusterError, ClusterState, Node

NICE = -10  # the VMs are what the cluster is waiting for; osctl and the forwarder are light
# The nodes that join run below the init node: until its API server answers they only wait for it,
# and under software emulation on a small host their kubelets and join retries took a third of the
# CPU the init node needed to bootstrap the control plane. Idle CPU still goes to them.
NICE_JOINING = 0


@dataclass(frozen=True)
class Image:
    """A raw (or qcow2) image the nodes boot from (each through a qcow2 overlay)."""

    path: Path
    format: str


def image_format(path: Path) -> str:
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def find_image(path: Path) -> Image:
    """Check the image exists and, from ``PATH.manifest.json`` when the bake wrote one, that it boots
    the kvm platform without a config URL (the cluster gives each node its config over fw_cfg)."""
    if not path.is_file():
        raise ClusterError(
            f"image {path} does not exist: bake one (`talos-bake raw --platform kvm`) or pass --image PATH"
        )
    manifest = path.with_name(path.name + ".manifest.json")
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        words = str(data.get("cmdline", "")).split()
        platform = next((w.split("=", 1)[1] for w in words if w.startswith("talos.platform=")), "kvm")
        if platform != "kvm":
            raise ClusterError(
                f"image {path} is baked for the {platform} platform: a local cluster boots kvm images "
                "(`talos-bake raw --platform kvm`)"
            )
        if any(w.startswith("talos.config=") for w in words):
            raise ClusterError(
                f"image {path} has a config URL on its kernel command line: the cluster gives each node "
                "its config over fw_cfg; bake it without --config-url"
            )
    return Image(path.resolve(), image_format(path))


def kvm_usable() -> bool:
    """KVM only when the CPU has vmx/svm and /dev/kvm opens (it exists but hangs on these hosts)."""
    try:
        if not re.search(r"\b(vmx|svm)\b", Path("/proc/cpuinfo").read_text()):
            return False
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def qemu_argv(
    state: ClusterState, node: Node, image: Image, *, kvm: bool, qemu: str = "qemu-system-x86_64"
) -> list[str]:
    """The command that starts ``node`` detached, inside the cluster's namespace, at a raised priority."""
    d = state.node_dir(node)
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    nice = NICE if node.role == "init" else NICE_JOINING
    argv = [
        "ip", "netns", "exec", state.netns, "nice", "-n", str(nice), qemu,
        "-name", node.name,
        "-nodefaults", "-display", "none", "-daemonize",
        "-pidfile", str(d / "qemu.pid"),
        "-m", str(node.memory_mb), "-smp", str(node.cpus), *accel,
        "-device", "virtio-rng-pci",
        "-chardev", f"file,id=serial0,path={d / 'serial.log'},append=on",
        "-serial", "chardev:serial0",
        # The guest's flushes are honoured (cache=writeback): with cache=unsafe QEMU kept the qcow2
        # overlay's cluster tables in its memory, so killing it (`stop`, a power cut) lost files the
        # node had written minutes before (a container's binary read back empty: exec format error).
        "-drive", f"file={d / 'disk.qcow2'},format=qcow2,if=virtio,cache=writeback",
        "-netdev", f"tap,id=n0,ifname={node.tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={node.mac}",
        "-fw_cfg", f"name=opt/talos/config,file={d / 'config.yaml'}",
    ]  # fmt: skip
    return argv


def create_disk(state: ClusterState, node: Node, image: Image) -> Path:
    """A qcow2 overlay backed by the shared image, of the node's disk size (EPHEMERAL grows into it)."""
    disk = state.node_dir(node) / "disk.qcow2"
    size = max(node.disk_mb, image.path.stat().st_size // (1 << 20) + 512)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.path), "-F", image.format,
         str(disk), f"{size}M"])  # fmt: skip
    return disk


def image_of(state: ClusterState) -> Image:
    path = Path(state.image)
    return Image(path, image_format(path))


def start(state: ClusterState, node: Node) -> int:
    """Start (or start again) a node's QEMU; returns its pid."""
    if running_pid(state, node) is not None:
        raise ClusterError(f"node {node.name} is already running")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise ClusterError("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86")
    (state.node_dir(node) / "qemu.pid").unlink(missing_ok=True)
    run(qemu_argv(state, node, image_of(state), kvm=kvm_usable(), qemu=qemu))
    pid = running_pid(state, node)
    if pid is None:
        raise ClusterError(f"QEMU for {node.name} exited at start; see {state.node_dir(node) / 'serial.log'}")
    return pid


def _pid_of(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile`` if that process runs and its command line holds ``marker`` (not a reused pid)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker in cmdline else None


def running_pid(state: ClusterState, node: Node) -> int | None:
    pidfile = state.node_dir(node) / "qemu.pid"
    return _pid_of(pidfile, str(pidfile))


def daemon_pid(pidfile: Path) -> int | None:
    """The dnsmasq or forwarder behind ``pidfile`` (their command lines name the cluster directory)."""
    return _pid_of(pidfile, str(pidfile.parent))


def kill(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL; waits until the pid is gone (QEMU's daemon is not our child)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def stop(state: ClusterState, node: Node) -> bool:
    """Power the node off at once (kill its QEMU, like pulling the plug); False if it was not running."""
    pid = running_pid(state, node)
    if pid is None:
        return False
    kill(pid, timeout=5.0)
    return True
