"""End to end: the baked image boots in QEMU (TCG) and becomes a configured node on each platform.

Every boot asserts on the serial console that the config was fetched, validated and applied
(hostname set, /var mounted) and that a write to / fails with EROFS. Servers listen on loopback;
the guest reaches them through QEMU's restricted user network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bakery import qemu
from bakery.image import BakeResult
from talos_os.config.generate import generate
from tools.nodevm import (
    CONFIG_HOST,
    IMDS_HOST,
    ConfigServer,
    NodeImage,
    boot_node,
    config_server,
    copy_disk,
    free_port,
    imds_server,
    osctl,
    user_net,
    wait_api,
    wait_ready,
)

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 600  # TCG on a shared 2-core machine


@pytest.fixture(scope="module")
def node_image(baked_image: BakeResult) -> NodeImage:
    return NodeImage.from_manifest(baked_image.manifest)


@pytest.fixture(scope="module")
def configs() -> Iterator[dict[str, str]]:
    generated = generate("e2e", "https://10.5.0.2:6443")
    yield {
        "controlplane": generated.controlplane,
        "worker": generated.worker,
        "talosconfig": generated.talosconfig,
    }


def with_hostname(config: str, hostname: str) -> str:
    return config.replace("  network: {}\n", f"  network:\n    hostname: {hostname}\n", 1)


def assert_configured(vm: qemu.Boot, hostname: str, source: str) -> None:
    """The checks every platform's boot must pass, read from the console."""
    got, _seconds = wait_ready(vm, BOOT_TIMEOUT)
    out = vm.output
    assert got == hostname, out[-3000:]
    assert re.search(rf"config: \d+ bytes from {re.escape(source)}[^,]*, valid", out), out[-3000:]
    assert f"hostname {hostname} (from " in out and f"hostname now {hostname}" in out
    assert "root: read-only squashfs (a write to / fails: Read-only file system)" in out
    assert re.search(r"disks: /var mounted; machine-id [0-9a-f]{32}", out)
    for phase in ("early mounts", "hardening", "platform", "disks", "network", "config", "apply", "services"):
        assert f"phase {phase}: done in" in out


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
    """A kvm node whose config comes from talos.config= (bad at first), disk kept across reboots."""
    work = tmp_path_factory.mktemp("node")
    disk = copy_disk(node_image.raw, work / "node.raw")
    talosconfig = work / "talosconfig"
    talosconfig.write_text(configs["talosconfig"])
    port = free_port()
    bad = configs["controlplane"].replace("type: controlplane", "type: bogus", 1)
    with config_server(bad) as server:
        net = user_net(forwards={CONFIG_HOST: server.port}, hostfwd={port: 50000})
        with boot_node(
            node_image, platform="kvm", config_url=server.guest_url, disk=disk, net=net, reboot=True
        ) as vm:
            yield RunningNode(vm, server, talosconfig, f"127.0.0.1:{port}")


def test_bad_config_is_reported_and_the_node_waits_for_a_good_one(
    node: RunningNode, configs: dict[str, str]
) -> None:
    """talos.config= through the user network; validation errors on the console; then the fix."""
    vm = node.vm
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
    services = osctl(node.talosconfig, node.endpoint, "services")
    assert services.returncode == 0, services.stderr
    rows = {line.split()[0]: line.split()[1] for line in services.stdout.splitlines()[1:] if line.strip()}
    assert rows == {"containerd": "running", "osd": "running"}
    logs = osd_call(node, "logs", "containerd", "--tail", "50")
    assert "containerd successfully booted" in logs
    dmesg = osd_call(node, "dmesg")
    assert "[talos] talos-os init" in dmesg and "Linux version" in dmesg


def osd_call(node: RunningNode, *args: str) -> str:
    result = osctl(node.talosconfig, node.endpoint, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ctrl_alt_del_reboots_in_order_and_var_survives(node: RunningNode) -> None:
    vm = node.vm
    first = re.search(r"machine-id ([0-9a-f]{32}) \(new\)", vm.output)
    assert first
    seen = len(vm.lines)
    vm.monitor("sendkey ctrl-alt-delete")
    vm.wait_for(r"\[talos\] reboot: stopping services", 120)
    vm.wait_for(r"\[talos\] rebooting", 120)
    vm.wait_for(r"boot 2 on this disk", BOOT_TIMEOUT)
    wait_ready(vm, BOOT_TIMEOUT)
    second_boot = "\n".join(vm.lines[seen:])
    assert f"machine-id {first.group(1)} (kept), boot 2 on this disk" in second_boot
    assert "formatting" not in second_boot  # the filesystem from the first boot was kept


def test_osctl_reboot_and_the_node_answers_again(node: RunningNode) -> None:
    vm = node.vm
    wait_api(node.talosconfig, node.endpoint)
    seen = len(vm.lines)
    reboot = osctl(node.talosconfig, node.endpoint, "reboot")
    assert reboot.returncode == 0, reboot.stderr
    vm.wait_for(r"boot 3 on this disk", BOOT_TIMEOUT)
    wait_ready(vm, BOOT_TIMEOUT)
    assert "reboot: stopping services" in "\n".join(vm.lines[seen:])
    wait_api(node.talosconfig, node.endpoint)
    assert "node-url" in osd_call(node, "version")


def test_kvm_fw_cfg_and_platform_detection(
    node_image: NodeImage, configs: dict[str, str], tmp_path: Path
) -> None:
    """No talos.platform and no URL: the node detects KVM and reads opt/talos/config from fw_cfg."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(with_hostname(configs["worker"], "node-fwcfg"))
    with boot_node(
        node_image, platform=None, extra=["-fw_cfg", f"name=opt/talos/config,file={cfg}"], net=user_net()
    ) as vm:
        assert_configured(vm, "node-fwcfg", "fw_cfg opt/talos/config")
        assert "platform: kvm (/sys/firmware/qemu_fw_cfg exists)" in vm.output


def test_aws_detected_by_smbios_with_imdsv2(node_image: NodeImage, configs: dict[str, str]) -> None:
    """SMBIOS says Amazon EC2; user data and hostname come from an IMDSv2 server on loopback."""
    with imds_server(configs["worker"].encode()) as imds:
        net = user_net(forwards={IMDS_HOST: imds.port}, imds=True)
        extra = ["-smbios", "type=1,manufacturer=Amazon EC2,product=t3.medium"]
        with boot_node(node_image, platform=None, net=net, extra=extra) as vm:
            assert_configured(vm, "ip-10-0-2-15", "AWS IMDSv2 user-data")
            assert "platform: aws (DMI sys_vendor is 'Amazon EC2')" in vm.output
            assert "hostname ip-10-0-2-15 (from platform)" in vm.output
        assert imds.log[0] == "PUT /latest/api/token"
        assert "GET /latest/user-data" in imds.log
        assert imds.violations == []  # IMDSv2 exactly: every GET carried a token


def test_bare_metal_cidata_iso(node_image: NodeImage, configs: dict[str, str], tmp_path: Path) -> None:
    """A NoCloud cidata ISO (built with pycdlib) attached as a second disk carries the config."""
    from bakery.cidata import build_cidata

    iso = build_cidata(with_hostname(configs["worker"], "node-metal").encode(), None, tmp_path / "cidata.iso")
    extra = ["-drive", f"file={iso},format=raw,if=virtio,readonly=on"]
    with boot_node(node_image, platform="bare-metal", extra=extra, net=user_net()) as vm:
        assert_configured(vm, "node-metal", "NoCloud volume /dev/vd")
        assert "(label cidata)" in vm.output
