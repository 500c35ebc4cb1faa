"""talos-bake kvm: the domain XML and virt-install line (unit), and end to end against a real libvirtd
(qemu:///system, software emulation): the domain the project defines boots to the init banner under
UEFI, and the printed ``virt-install --import`` line boots the same image under BIOS."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakeimage import make_image

from bakery import qemu
from bakery.cli import cli
from bakery.errors import BakeError
from bakery.image import BakeResult
from bakery.tools import which
from platforms.kvm import publish
from platforms.kvm.publish import DomainSpec, Network
from talos_os import __version__
from tools.libvirtd import ensure_running

URI = "qemu:///system"
BOOT_TIMEOUT = 300.0


def _spec(tmp_path: Path, **kw: Any) -> DomainSpec:
    return DomainSpec(name="node-1", disk=tmp_path / "talos.qcow2", serial_log=tmp_path / "serial.log", **kw)


def test_uefi_domain_xml(tmp_path: Path) -> None:
    dom = ET.fromstring(publish.domain_xml(_spec(tmp_path, memory_mib=1536, vcpus=3)))
    assert dom.get("type") == "qemu" and dom.findtext("name") == "node-1"
    assert dom.find("memory").text == "1536" and dom.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert dom.findtext("vcpu") == "3"
    assert dom.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    features = {f.get("name"): f.get("enabled") for f in dom.findall("os/firmware/feature")}
    assert features == {"secure-boot": "no", "enrolled-keys": "no"}, "our GRUB is not signed"
    disk = dom.find("devices/disk")
    assert disk is not None and disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == str(tmp_path / "talos.qcow2")  # type: ignore[union-attr]
    nic = dom.find("devices/interface")
    assert nic is not None and nic.get("type") == "network"
    assert nic.find("source").get("network") == "default"  # type: ignore[union-attr]
    assert nic.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert dom.find("devices/serial").get("type") == "pty"  # type: ignore[union-attr]
    assert dom.find("devices/serial/log").get("file") == str(tmp_path / "serial.log")  # type: ignore[union-attr]
    assert dom.find("devices/console/target").get("type") == "serial"  # type: ignore[union-attr]
    assert dom.find("devices/rng").get("model") == "virtio"  # type: ignore[union-attr]


def test_bios_domain_xml_and_networks(tmp_path: Path) -> None:
    dom = ET.fromstring(
        publish.domain_xml(_spec(tmp_path, firmware="bios", network=Network.parse("bridge=br0")))
    )
    assert dom.find("os").get("firmware") is None and dom.find("os/firmware") is None  # type: ignore[union-attr]
    assert dom.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    nic = dom.find("devices/interface")
    assert nic is not None and nic.get("type") == "bridge" and nic.find("source").get("bridge") == "br0"  # type: ignore[union-attr]
    dom = ET.fromstring(publish.domain_xml(_spec(tmp_path, network=Network.parse("none"))))
    assert dom.find("devices/interface") is None
    dom = ET.fromstring(publish.domain_xml(_spec(tmp_path, domain_type="kvm")))
    assert dom.get("type") == "kvm" and dom.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]


def test_bad_inputs_are_one_sentence_errors(tmp_path: Path) -> None:
    for text in ("network", "bridge=", "user=x", "tap0"):
        with pytest.raises(BakeError, match="network=NAME, bridge=NAME, user or none"):
            Network.parse(text)
    with pytest.raises(BakeError, match="absolute"):
        DomainSpec(name="n", disk=Path("rel.qcow2"))
    with pytest.raises(BakeError, match="uefi or bios"):
        DomainSpec(name="n", disk=tmp_path / "x", firmware="coreboot")


def test_virt_install_line(tmp_path: Path) -> None:
    argv = shlex.split(publish.virt_install_line(_spec(tmp_path, network=Network.parse("user")), URI))
    assert argv[0] == "virt-install" and "--import" in argv and "--noautoconsole" in argv
    opts = {a: b for a, b in itertools.pairwise(argv) if a.startswith("--") and not b.startswith("--")}
    assert opts["--virt-type"] == "qemu" and opts["--connect"] == URI
    assert opts["--disk"] == f"path={tmp_path / 'talos.qcow2'},format=qcow2,bus=virtio"
    assert opts["--network"] == "user,model=virtio"
    assert opts["--boot"].startswith("uefi,") and "secure-boot" in opts["--boot"]
    assert opts["--serial"] == f"pty,log.file={tmp_path / 'serial.log'},log.append=off"
    bios = shlex.split(publish.virt_install_line(_spec(tmp_path, firmware="bios"), URI))
    assert bios[bios.index("--boot") + 1] == "hd"


def _tiny_qcow2(path: Path) -> Path:
    subprocess.run([which("qemu-img"), "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def test_cli_publishes_an_existing_qcow2_without_libvirt(tmp_path: Path) -> None:
    disk = make_image(tmp_path / "talos-kvm.qcow2", "kvm", fmt="qcow2")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["kvm", "--image", str(disk), "--out", str(out), "--name", "n1",
                                      "--firmware", "bios", "--virt-type", "qemu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    qcow2, xml, line = result.stdout.splitlines()
    assert qcow2 == str(disk), "a qcow2 image is used where it is"
    assert ET.parse(xml).getroot().find("devices/disk/source").get("file") == str(disk)  # type: ignore[union-attr]
    assert line.startswith("virt-install ") and "--name n1" in line


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    disk = make_image(tmp_path / "t.qcow2", "kvm", fmt="qcow2")
    runner = CliRunner()
    result = runner.invoke(cli, ["kvm", "--image", str(disk), "--out", str(tmp_path), "--start"])
    assert result.exit_code == 2 and "--start needs --define" in result.output
    result = runner.invoke(cli, ["kvm", "--platform", "xen", "--out", str(tmp_path)])  # it only bakes for kvm
    assert result.exit_code == 2 and "talos-bake kvm only bakes kvm images: drop --platform" in result.output
    result = runner.invoke(cli, ["kvm", "--image", str(disk), "--out", str(tmp_path), "--define",
                                 "--uri", f"qemu:///system?socket={tmp_path}/no-such-socket"])  # fmt: skip
    assert result.exit_code == 1
    assert "cannot connect to libvirt" in result.output and "start libvirtd" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(
        cli, ["kvm", "--image", str(disk), "--out", str(tmp_path), "--config-url", "http://x/"]
    )
    assert result.exit_code == 1 and "--config-url only applies when baking" in result.output


# --- end to end, against libvirtd ---------------------------------------------------------------


@pytest.fixture(scope="session")
def libvirt_conn() -> Iterator[Any]:
    """The system libvirtd, started by the test suite if it is not running."""
    ensure_running()
    conn = publish.connect(URI)
    yield conn
    conn.close()


@pytest.fixture
def workdir(baked_image: BakeResult, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Under the test build directory, not /tmp/pytest-of-root (mode 700): libvirt's QEMU must read it."""
    path = baked_image.raw.parent.parent / "kvm-publish" / request.node.name.replace("[", "-").rstrip("]")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def domain_name(libvirt_conn: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A domain name for this test; the domain is destroyed and undefined afterwards."""
    name = f"talos-test-{request.node.name}"[:60]
    publish.remove(libvirt_conn, name)
    yield name
    publish.remove(libvirt_conn, name)


def wait_for_banner(conn: Any, name: str, log: Path, started: float) -> tuple[re.Match[str], float]:
    """Poll the serial log file libvirt writes until the init banner shows."""
    dom = conn.lookupByName(name)
    text = ""
    while time.monotonic() - started < BOOT_TIMEOUT:
        text = log.read_text(errors="replace") if log.exists() else ""
        match = qemu.BANNER.search(text)
        if match:
            return match, time.monotonic() - started
        if not dom.isActive():
            break
        time.sleep(1)
    tail = "\n".join(text.splitlines()[-25:])
    raise AssertionError(
        f"no init banner in {log} (domain active: {bool(dom.isActive())}); last lines:\n{tail}"
    )


@pytest.mark.e2e
def test_defined_domain_boots_to_the_banner_under_uefi(
    baked_image: BakeResult, libvirt_conn: Any, workdir: Path, domain_name: str
) -> None:
    log = workdir / "serial.log"
    started = time.monotonic()
    result = CliRunner().invoke(cli, [
        "kvm", "--image", str(baked_image.raw), "--out", str(workdir), "--name", domain_name, "--firmware", "uefi",
        "--network", "user", "--memory", "1024", "--serial-log", str(log), "--define", "--start",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    match, seconds = wait_for_banner(libvirt_conn, domain_name, log, started)
    assert match.group(1) == __version__ and match.group(2) == "kvm"
    live = ET.fromstring(libvirt_conn.lookupByName(domain_name).XMLDesc())
    assert live.get("type") == "qemu"
    assert live.find("os/loader") is not None, "libvirt picked UEFI firmware"
    assert live.find("devices/disk/target").get("bus") == "virtio"  # type: ignore[union-attr]
    print(f"libvirt domain (UEFI): banner after {seconds:.1f} s")

    again = CliRunner().invoke(cli, ["kvm", "--image", str(workdir / "talos-kvm.qcow2"), "--out", str(workdir),
                                     "--name", domain_name, "--define"])  # fmt: skip
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output
    forced = CliRunner().invoke(cli, ["kvm", "--image", str(workdir / "talos-kvm.qcow2"), "--out", str(workdir),
                                      "--name", domain_name, "--network", "none", "--define", "--force"])  # fmt: skip
    assert forced.exit_code == 0, forced.output
    replaced = libvirt_conn.lookupByName(domain_name)
    assert not replaced.isActive() and ET.fromstring(replaced.XMLDesc()).find("devices/interface") is None


@pytest.mark.e2e
def test_virt_install_line_boots_to_the_banner_under_bios(
    baked_image: BakeResult, libvirt_conn: Any, workdir: Path, domain_name: str
) -> None:
    log = workdir / "serial.log"
    result = CliRunner().invoke(cli, [
        "kvm", "--image", str(baked_image.raw), "--out", str(workdir), "--name", domain_name, "--firmware", "bios",
        "--network", "user", "--memory", "1024", "--serial-log", str(log),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    line = result.stdout.splitlines()[-1]
    started = time.monotonic()
    proc = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    match, seconds = wait_for_banner(libvirt_conn, domain_name, log, started)
    assert match.group(2) == "kvm"
    live = ET.fromstring(libvirt_conn.lookupByName(domain_name).XMLDesc())
    assert live.find("os/loader") is None, "SeaBIOS, no UEFI loader"
    print(f"virt-install --import (BIOS): banner after {seconds:.1f} s")
