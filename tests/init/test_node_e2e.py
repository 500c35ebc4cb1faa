"""End to end: the baked image boots in QEMU (TCG) and becomes a configured node on each platform.

Every boot asserts on the serial console that the config was fetched, validated and applied
(hostname set, /var mounted) and that a write to / fails with EROFS. Servers listen on loopback;
the guest reaches them through QEMU's restricted user network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.nodevm import (
    IMDS_HOST,
    NodeImage,
    assert_configured,
    boot_node,
    imds_server,
    user_net,
    with_hostname,
)

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 600  # TCG on a shared 2-core machine


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
