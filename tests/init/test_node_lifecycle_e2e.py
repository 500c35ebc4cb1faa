"""End to end: one node's life in QEMU (TCG): a bad then a good config, the API, Ctrl-Alt-Del,
osctl reboot and reset, on one disk that persists across the reboots.

The tests run in file order and share the running node.

Every boot asserts on the serial console that the config was fetched, validated and applied
(hostname set, /var mounted) and that a write to / fails with EROFS. Servers listen on loopback;
the guest reaches them through QEMU's restricted user network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bakery import qemu
from tools.nodevm import (
    ConfigServer,
    NodeImage,
    assert_configured,
    copy_disk,
    osctl,
    served_node,
    wait_api,
    wait_ready,
    with_hostname,
)

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 600  # TCG on a shared 2-core machine


@dataclass
class RunningNode:
    """One node kept up across the tests below (they run in file order and build on each other)."""

    vm: qemu.Boot
    server: ConfigServer
    talosconfig: Path
    endpoint: str


@pytest.fixture(scope="module")
def node(
    node_image: NodeImage, configs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNode]:
    """A kvm node whose config comes from talos.config= (nothing at first), disk kept across reboots."""
    work = tmp_path_factory.mktemp("node")
    disk = copy_disk(node_image.raw, work / "node.raw")
    talosconfig = work / "talosconfig"
    talosconfig.write_text(configs["talosconfig"])
    # Nothing to serve yet: 404 until a test sets a config.
    with served_node(node_image, b"", disk=disk, reboot=True) as served:
        yield RunningNode(served.vm, served.server, talosconfig, served.endpoint)


def test_bad_config_is_reported_and_the_node_waits_for_a_good_one(
    node: RunningNode, configs: dict[str, str]
) -> None:
    """talos.config= through the user network: a failing source is retried with backoff, an invalid
    config shows its validation errors on the console and the node waits; then the fix."""
    vm = node.vm
    vm.wait_for(r"config source failed: .*404", BOOT_TIMEOUT)
    vm.wait_for(r"config: waiting \d+\.\d s before attempt 3", 60)
    node.server.set(configs["controlplane"].replace("type: controlplane", "type: bogus", 1))
    vm.wait_for(r"the machine config from kernel command line talos.config= is invalid", BOOT_TIMEOUT)
    vm.wait_for(r"machine\.type \(line \d+, column \d+\)", 30)
    vm.wait_for(r"config: waiting", 30)
    assert "node ready" not in vm.output  # alive and waiting, not crashed
    node.server.set(with_hostname(configs["controlplane"], "node-url"))
    assert_configured(vm, "node-url", "kernel command line talos.config=")
    assert re.search(r"machine-id [0-9a-f]{32} \(new\), boot 1 on this disk", vm.output), vm.output[-3000:]
    assert "formatting blank /dev/vda6" in vm.output and "as ext4 EPHEMERAL" in vm.output


def test_osctl_talks_to_the_node_over_mutual_tls(node: RunningNode) -> None:
    """version, services, logs and dmesg through QEMU's port forward on loopback."""
    wait_api(node.talosconfig, node.endpoint)
    version = osctl(node.talosconfig, node.endpoint, "version")
    assert version.returncode == 0 and "node-url" in version.stdout and "v1" in version.stdout
    services = osctl(node.talosconfig, node.endpoint, "services", "-o", "json")
    assert services.returncode == 0, services.stderr
    rows = {s["id"]: s["state"] for s in json.loads(services.stdout)}
    assert rows["containerd"] == rows["osd"] == "running", rows
    # a control plane with no cluster to join: its Kubernetes services are there, waiting or working
    assert {"trustd", "images", "kubeadm", "kubelet"} <= set(rows), rows
    table = osctl(node.talosconfig, node.endpoint, "services").stdout.splitlines()
    assert table[0].split()[:3] == ["NODE", "SERVICE", "STATE"] and len(table) == len(rows) + 1
    logs = osd_call(node, "logs", "containerd", "--tail", "2000")  # CRI keeps logging after boot
    assert "containerd successfully booted" in logs
    dmesg = osd_call(node, "dmesg")
    assert "[talos] talos-os init" in dmesg and "Linux version" in dmesg
    kubeconfig = osd_call(node, "kubeconfig")  # made from the cluster CA: Kubernetes is not bootstrapped
    assert "server: https://10.5.0.2:6443" in kubeconfig and "client-key-data:" in kubeconfig
    # links, routes and the addresses osd's certificate names: answered by the init (osd has no netlink)
    links = {i["name"]: i for i in json.loads(osd_call(node, "interfaces", "-o", "json"))}
    assert "127.0.0.1/8" in links["lo"]["addresses"], links
    assert any("10.0.2.15/24" in i["addresses"] and "UP" in i["flags"] for i in links.values()), links
    routes = json.loads(osd_call(node, "routes", "-o", "json"))
    assert any(r["destination"] == "10.0.2.0/24" and r["scope"] == "link" for r in routes), routes
    certificate = next(
        line for line in osd_call(node, "logs", "osd").splitlines() if "server certificate" in line
    )
    assert "10.0.2.15" in certificate, certificate
    var = next(line for line in osd_call(node, "read", "/proc/mounts").splitlines() if " /var ext4 " in line)
    assert "nodelalloc" in var.split()[3].split(","), var  # unpacked layers reach the disk within a commit


def osd_call(node: RunningNode, *args: str) -> str:
    result = osctl(node.talosconfig, node.endpoint, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ctrl_alt_del_reboots_in_order_var_survives_and_grows(node: RunningNode) -> None:
    vm = node.vm
    first = re.search(r"machine-id ([0-9a-f]{32}) \(new\)", vm.output)
    assert first
    vm.monitor("block_resize virtio0 3G")  # the disk grows while the node runs; the next boot grows /var
    seen = len(vm.lines)
    vm.monitor("sendkey ctrl-alt-delete")
    vm.wait_for(r"\[talos\] reboot: stopping services", 120, seen)
    vm.wait_for(r"\[talos\] rebooting", 120, seen)
    vm.wait_for(r"boot 2 on this disk", BOOT_TIMEOUT, seen)
    wait_ready(vm, BOOT_TIMEOUT, seen)
    second_boot = "\n".join(vm.lines[seen:])
    assert f"machine-id {first.group(1)} (kept), boot 2 on this disk" in second_boot
    assert "formatting" not in second_boot  # the filesystem from the first boot was kept
    assert "moved the backup GPT of /dev/vda to the end of the disk" in second_boot
    assert re.search(r"/dev/vda6 grown from 1245 MiB to 2269 MiB", second_boot), second_boot[-3000:]
    assert re.search(r"filesystem on /dev/vda6 grown from \d+ MiB to 22\d\d MiB", second_boot)


def test_osctl_reboot_and_the_node_answers_again(node: RunningNode) -> None:
    vm = node.vm
    wait_api(node.talosconfig, node.endpoint)
    seen = len(vm.lines)
    reboot = osctl(node.talosconfig, node.endpoint, "reboot")
    assert reboot.returncode == 0, reboot.stderr
    vm.wait_for(r"boot 3 on this disk", BOOT_TIMEOUT, seen)
    wait_ready(vm, BOOT_TIMEOUT, seen)
    assert "reboot: stopping services" in "\n".join(vm.lines[seen:])
    wait_api(node.talosconfig, node.endpoint)
    assert "node-url" in osd_call(node, "version")


def test_osctl_reset_wipes_var_and_the_node_starts_afresh(node: RunningNode) -> None:
    vm = node.vm
    old = re.findall(r"machine-id ([0-9a-f]{32})", vm.output)[-1]
    seen = len(vm.lines)
    reset = osctl(node.talosconfig, node.endpoint, "reset", "--yes")
    assert reset.returncode == 0, reset.stderr
    vm.wait_for(r"disks: wiped /dev/vda6", 120, seen)
    wait_ready(vm, BOOT_TIMEOUT, seen)
    after = "\n".join(vm.lines[seen:])
    assert "formatting blank /dev/vda6" in after
    fresh = re.search(r"machine-id ([0-9a-f]{32}) \(new\), boot 1 on this disk", after)
    assert fresh and fresh.group(1) != old
