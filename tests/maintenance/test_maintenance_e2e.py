"""End to end, one QEMU VM for the whole path a bare-metal operator takes.

The live ISO boots with a blank virtio disk and no config source: the node enters maintenance mode.
Without a client certificate it answers version and disks and refuses everything else; a config
whose install disk does not exist and one that is not YAML are refused with their errors; a good
one installs the node to its disk and it reboots (the ISO still inserted: its GRUB menu boots the
installed disk) into the configured system, which answers osctl with the generated talosconfig.
The ISO is ejected, then on the running node apply-config changes a sysctl and the nameservers
live (the network manager runs again, the API stays up), a config of another cluster is refused,
and a reboot-only field (certSANs: osd's certificate is issued at its start) is applied with
--mode reboot (the VM reboots from its disk alone).
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509

from bakery import qemu
from bakery.cli import cli as bake_cli
from bakery.image import BakeResult
from talos_os import maintenance
from talos_os import talosconfig as tc
from talos_os.api.gen import node_pb2 as npb
from talos_os.api.gen import node_pb2_grpc as npb_grpc
from talos_os.config.generate import generate
from talos_os.osctl.client import Target
from talos_os.osctl.machine_cmds import pinned_channel
from tools.nodevm import free_port, user_net, wait_api, wait_ready
from tools.nodevm import osctl as osctl_tc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # three boots under TCG, an install between
TIMEOUT = 900  # TCG on a shared 2-core machine
OSCTL = str(Path(sys.executable).with_name("osctl"))
SAN = "maint.example.test"
FINGERPRINT = re.compile(r"maintenance: certificate fingerprint \(SHA-256\) ([0-9a-f]{64})")


def osctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OSCTL, "--talosconfig", "/nonexistent", *args], capture_output=True, text=True, timeout=180
    )


def served_names(talosconfig: Path, endpoint: str) -> list[str]:
    """The DNS names in the certificate osd serves (fetched with the operator's client identity)."""
    ctx = tc.load(talosconfig).current()
    with tempfile.TemporaryDirectory() as tmp:
        crt, key = Path(tmp) / "crt", Path(tmp) / "key"
        crt.write_bytes(base64.b64decode(ctx.crt))
        key.write_bytes(base64.b64decode(ctx.key))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.load_verify_locations(cadata=base64.b64decode(ctx.ca).decode())
        tls.load_cert_chain(crt, key)
        host, port = endpoint.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as raw, tls.wrap_socket(raw) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sans.value.get_values_for_type(x509.DNSName)


def config(text: str, **machine: object) -> str:
    doc = yaml.safe_load(text)
    for key, value in machine.items():
        doc["machine"][key] = value
    return yaml.safe_dump(doc, sort_keys=False)


def test_iso_to_installed_node_and_apply_config(baked_image: BakeResult, tmp_path: Path) -> None:
    result = CliRunner().invoke(bake_cli, ["iso", "--image", str(baked_image.raw), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    iso = Path(result.output.strip().splitlines()[-1])
    disk = tmp_path / "blank.raw"
    with open(disk, "wb") as f:
        f.truncate(baked_image.raw.stat().st_size + (512 << 20))
    generated = generate("maint", "https://10.5.0.2:6443")
    base = yaml.safe_load(generated.controlplane)["machine"]["network"]
    files = {name: tmp_path / f"{name}.yaml" for name in ("good", "nodisk", "live", "reboot", "other")}
    files["good"].write_text(config(generated.controlplane, install={"disk": "/dev/vda", "wipe": False},
                                    network={**base, "hostname": "maint"}))  # fmt: skip
    files["nodisk"].write_text(generated.controlplane)  # install.disk /dev/sda: no such disk here
    (tmp_path / "bad.yaml").write_text("machine: [\n")
    good = yaml.safe_load(files["good"].read_text())
    sysctl = {"net.ipv4.tcp_keepalive_time": "600"}
    files["live"].write_text(
        config(files["good"].read_text(), sysctls=sysctl,
               network={**good["machine"]["network"], "nameservers": ["10.0.2.9"]})
    )  # fmt: skip
    live = yaml.safe_load(files["live"].read_text())
    files["reboot"].write_text(
        config(files["live"].read_text(), certSANs=[*live["machine"]["certSANs"], SAN])
    )
    files["other"].write_text(generate("other", "https://10.5.0.2:6443").controlplane)
    talosconfig = tmp_path / "talosconfig"
    talosconfig.write_text(generated.talosconfig)

    port = free_port()
    node = f"127.0.0.1:{port}"
    net = user_net(hostfwd={port: 50000})
    extra = ["-cdrom", str(iso), "-boot", "order=dc", *net]
    with qemu.start(disk, snapshot=False, firmware="bios", memory_mb=2048, extra=extra, reboot=True) as vm:
        try:
            walk(vm, node, port, files, tmp_path, talosconfig, disk)
        except BaseException:
            print("\n".join(vm.lines[-150:]))
            raise


def walk(
    vm: qemu.Boot, node: str, port: int, files: dict[str, Path], tmp_path: Path, talosconfig: Path, disk: Path
) -> None:
    """The operator's path, on the running VM (see the module docstring)."""
    # --- maintenance mode -------------------------------------------------------------------
    m, seconds = vm.wait_for(FINGERPRINT, TIMEOUT)
    fp = m.group(1)
    vm.wait_for(r"maintenance: the API answers on port 50000", TIMEOUT)
    print(f"maintenance mode after {seconds:.0f} s")
    pin = ["-n", node, "--cert-fingerprint", fp]
    version = osctl("version", "--insecure", *pin)
    assert version.returncode == 0, version.stderr
    disks = osctl("disks", "--insecure", *pin)
    assert disks.returncode == 0 and re.search(r"/dev/vda\s+\S+ \S+\s.*nothing", disks.stdout), disks.stdout
    with (
        pinned_channel(Target(node, "127.0.0.1", port), fp, print) as ch,
        pytest.raises(grpc.RpcError) as refused,
    ):
        npb_grpc.NodeStub(ch).ServiceList(npb.Empty(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == maintenance.REFUSED
    nodisk = osctl("apply-config", "--insecure", *pin, "--file", str(files["nodisk"]))
    assert nodisk.returncode == 1
    assert (
        "machine.install.disk: /dev/sda does not exist on this node: choose one of /dev/vda" in nodisk.stderr
    )
    bad = osctl("apply-config", "--insecure", *pin, "--file", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 1 and "invalid YAML" in bad.stderr, bad.stderr
    assert disk.stat().st_blocks == 0, "nothing was written"

    # --- install and reboot into the installed system -----------------------------------
    since = len(vm.lines)
    applied = osctl("apply-config", "--insecure", *pin, "--file", str(files["good"]))
    assert applied.returncode == 0, applied.stderr
    assert "installing to /dev/vda" in applied.stdout
    vm.wait_for(r"install: verified: /dev/vda reads back the image's sha256", TIMEOUT, since)
    vm.wait_for(r"install: saved the machine config on /dev/vda\d", TIMEOUT, since)
    took, _ = vm.wait_for(r"install: /dev/vda installed in (\d+) s", TIMEOUT, since)
    print(f"install (write, verify, EPHEMERAL, config) took {took.group(1)} s")
    hostname, seconds = wait_ready(vm, TIMEOUT, since)
    assert hostname == "maint"
    after = "\n".join(vm.lines[since:])
    assert re.search(r"stage1: root ROOT-A \(/dev/vda\d\) mounted", after), "the ISO booted the disk"
    assert "config: " in after and "from saved config /var/lib/talos/config.yaml, valid" in after
    print(f"installed and configured after {seconds:.0f} s")
    wait_api(talosconfig, node, timeout=TIMEOUT)
    version = osctl_tc(talosconfig, node, "version")
    assert version.returncode == 0 and "maint" in version.stdout, version.stderr
    vm.monitor("eject -f ide1-cd0")

    # --- apply-config on the configured node ----------------------------------------------
    dry = osctl_tc(talosconfig, node, "apply-config", "--file", str(files["live"]), "--dry-run")
    assert dry.returncode == 0 and "machine.sysctls.net.ipv4.tcp_keepalive_time  (live)" in dry.stdout, (
        dry.stdout
    )
    assert "machine.network.nameservers  (live)" in dry.stdout, dry.stdout
    assert (
        osctl_tc(talosconfig, node, "read", "/proc/sys/net/ipv4/tcp_keepalive_time").stdout.strip() != "600"
    )
    live = osctl_tc(talosconfig, node, "apply-config", "--file", str(files["live"]))
    assert live.returncode == 0 and "applied without a reboot" in live.stdout, live.stdout + live.stderr
    assert (
        osctl_tc(talosconfig, node, "read", "/proc/sys/net/ipv4/tcp_keepalive_time").stdout.strip() == "600"
    )
    assert "nameservers 10.0.2.9" in live.stdout, live.stdout  # the network manager's report
    resolv = osctl_tc(talosconfig, node, "read", "/etc/resolv.conf")
    assert "nameserver 10.0.2.9" in resolv.stdout, resolv.stdout + resolv.stderr
    assert SAN not in served_names(talosconfig, node)
    other = osctl_tc(talosconfig, node, "apply-config", "--file", str(files["other"]))
    assert other.returncode == 1 and "belongs to another cluster" in other.stderr, other.stderr
    refused_nr = osctl_tc(
        talosconfig, node, "apply-config", "--file", str(files["reboot"]), "--mode", "no-reboot"
    )
    assert refused_nr.returncode == 1 and "cannot change without a reboot" in refused_nr.stderr
    since = len(vm.lines)
    reboot = osctl_tc(talosconfig, node, "apply-config", "--file", str(files["reboot"]), "--mode", "reboot")
    assert reboot.returncode == 0 and "the node reboots into it" in reboot.stdout, (
        reboot.stdout + reboot.stderr
    )
    assert "machine.certSANs  (at reboot)" in reboot.stdout, reboot.stdout
    wait_ready(vm, TIMEOUT, since)
    again = "\n".join(vm.lines[since:])
    assert re.search(r"stage1: root ROOT-A \(/dev/vda\d\) mounted", again), "booted from the disk, no ISO"
    wait_api(talosconfig, node, timeout=TIMEOUT)
    assert SAN in served_names(talosconfig, node), "osd's certificate names the new certSANs"
    resolv = osctl_tc(talosconfig, node, "read", "/etc/resolv.conf")
    assert "nameserver 10.0.2.9" in resolv.stdout, resolv.stdout + resolv.stderr
    assert (
        osctl_tc(talosconfig, node, "read", "/proc/sys/net/ipv4/tcp_keepalive_time").stdout.strip() == "600"
    )
