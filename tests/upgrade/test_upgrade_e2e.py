"""End to end: A/B upgrades of a node in QEMU (TCG), booted through GRUB as a real disk boots.

SeaBIOS runs the whole story on one disk: version N boots from slot A; ``osctl upgrade`` streams the
N+1 bundle (a second bake with another TALOS_VERSION) and the node comes back on N+1 from slot B
with /var kept; bad bundles are refused and change nothing; ``osctl rollback`` returns to N; a
bundle whose init fails (``talos.test=fail-init`` in its kernel arguments) is tried once and the
node falls back to N by itself, reporting the failure; QEMU killed while a slot is being written
leaves a node that boots its good slot. OVMF proves the same GRUB environment handling under UEFI
with one upgrade. The tests run in file order and share their node.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from upgradekit import make_bundle

from bakery.image import BakeOptions, BakeResult, bake
from bakery.options import FAST_SQUASHFS_LEVEL
from talos_os import __version__
from tools.nodevm import CONFIG_HOST, copy_disk, free_port, with_hostname
from tools.upgradevm import BOOT_TIMEOUT, Files, Node

# The first test's time includes the bakes and the first boot (fixtures): more than the suite's 30 min on a loaded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(5400)]
NEXT = f"{__version__}.1-next"
FAIL_ARGS = "talos.test=fail-init talos.panic_delay=5"


@pytest.fixture(scope="module")
def bundles(
    baked_image: BakeResult, test_lock: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """N+1 (another version string: a new root) and a bundle of N whose init fails on purpose."""
    out = tmp_path_factory.mktemp("bundles")
    base = BakeOptions(platform="kvm", lock_path=test_lock, quiet=True, squashfs_level=FAST_SQUASHFS_LEVEL)
    os.environ["TALOS_VERSION"] = NEXT
    try:
        nxt = bake(dataclasses.replace(base, out=out / "next"), ("upgrade",))
    finally:
        del os.environ["TALOS_VERSION"]
    fail = bake(dataclasses.replace(base, out=out / "fail", extra_kernel_args=FAIL_ARGS), ("upgrade",))
    return {"next": nxt.converted["upgrade"], "fail": fail.converted["upgrade"]}


@pytest.fixture(scope="module")
def configs() -> dict[str, str]:
    from talos_os.config.generate import generate

    generated = generate("upgrade", "https://10.5.0.2:6443")
    return {"controlplane": generated.controlplane, "talosconfig": generated.talosconfig}


def make_node(firmware: str, baked_image: BakeResult, configs: dict[str, str], work: Path) -> Iterator[Node]:
    config = work / "config.yaml"
    config.write_text(with_hostname(configs["controlplane"], f"up-{firmware}"))
    talosconfig = work / "talosconfig"
    talosconfig.write_text(configs["talosconfig"])
    files = Files()
    node = Node(
        copy_disk(baked_image.raw, work / "disk.raw"), firmware, config, talosconfig, files, free_port()
    )
    node.start()
    try:
        node.wait_up(0)
        yield node
    finally:
        if node.vm is not None:
            node.vm.stop()
        files.close()


@pytest.fixture(scope="module")
def bios_node(
    baked_image: BakeResult, configs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    yield from make_node("bios", baked_image, configs, tmp_path_factory.mktemp("bios"))


def machine_id(text: str) -> str:
    found = re.findall(r"machine-id ([0-9a-f]{32}) \((?:new|kept)\)", text)
    assert found, text[-3000:]
    return found[-1]


def upgrade_and_come_back(node: Node, image: str, version: str) -> subprocess.CompletedProcess[str]:
    assert node.vm is not None
    since = len(node.vm.lines)
    result = node.osctl("upgrade", "--image", image, "--wait", "--wait-timeout", str(2 * BOOT_TIMEOUT),
                        timeout=3 * BOOT_TIMEOUT)  # fmt: skip
    assert result.returncode == 0, result.stderr + node.vm.output[-3000:]
    assert f"slot B holds {version}; rebooting into it" in result.stdout or "slot A holds" in result.stdout
    assert re.search(rf"running {re.escape(version)} from slot [AB], kept", result.stdout), result.stdout
    node.vm.wait_for(rf"slots: booted slot [AB] \({re.escape(version)}\), on trial", BOOT_TIMEOUT, since)
    node.vm.wait_for(rf"slots: slot [AB] \({re.escape(version)}\) is ready", BOOT_TIMEOUT, since)
    node.wait_up(since)
    return result


def test_upgrade_streamed_from_a_file_boots_n_plus_1_and_keeps_var(
    bios_node: Node, bundles: dict[str, Path]
) -> None:
    node = bios_node
    assert node.vm is not None
    assert node.version()["tag"] == __version__
    assert node.slots() == {"A": ("good", __version__, True, True), "B": ("", "", False, False)}
    before = machine_id(node.vm.output)
    since = len(node.vm.lines)
    result = upgrade_and_come_back(node, str(bundles["next"]), NEXT)
    for phase in ("uploading 100%", "verifying", "writing root", "checking root"):
        assert phase in result.stderr, result.stderr
    assert node.version()["tag"] == NEXT
    assert node.slots() == {"A": ("good", __version__, False, False), "B": ("good", NEXT, True, True)}
    after = node.lines_since(since)
    assert f"machine-id {before} (kept)" in after, "/var (the machine id) survived the upgrade"


def test_bad_bundles_are_refused_in_one_sentence_and_change_nothing(bios_node: Node, tmp_path: Path) -> None:
    node = bios_node
    before = node.slots()
    damaged = make_bundle(tmp_path / "damaged", "9.9.9")
    with tarfile.open(damaged) as tar:
        root = tar.getmember("root.sqsh")
    raw = bytearray(damaged.read_bytes())
    raw[root.offset_data + root.size // 2] ^= 0xFF  # the tar stays readable, the checksum does not match
    damaged.write_bytes(bytes(raw))
    cases = {
        node.files.url("damaged.upgrade", damaged): "root.sqsh does not match its sha256",
        node.files.url("arm.upgrade", make_bundle(tmp_path / "arm", arch="aarch64")): (
            "the bundle is for aarch64, but this node is x86_64"
        ),
        f"http://{CONFIG_HOST}/missing.upgrade": "answered HTTP 404",
    }
    for url, sentence in cases.items():
        result = node.osctl("upgrade", "--image", url)
        assert result.returncode == 1 and sentence in result.stderr, (url, result.stderr)
        assert "Traceback" not in result.stderr
    junk = tmp_path / "junk.upgrade"
    junk.write_bytes(b"not a bundle" * 1000)
    local = node.osctl("upgrade", "--image", str(junk))
    assert local.returncode != 0 and "not an upgrade bundle" in local.stderr
    assert node.slots() == before, "nothing was written and the node keeps serving"


def test_rollback_returns_to_n(bios_node: Node) -> None:
    node = bios_node
    assert node.vm is not None
    since = len(node.vm.lines)
    result = node.osctl("rollback")
    assert result.returncode == 0 and f"slot A ({__version__}) is the default now" in result.stdout, (
        result.stderr
    )
    node.vm.wait_for(rf"slots: booted slot A \({re.escape(__version__)}\)", BOOT_TIMEOUT, since)
    node.wait_up(since)
    assert node.version()["tag"] == __version__
    assert node.slots() == {"A": ("good", __version__, True, True), "B": ("good", NEXT, False, False)}


def test_a_version_whose_init_fails_is_left_behind_by_itself(
    bios_node: Node, bundles: dict[str, Path]
) -> None:
    node = bios_node
    assert node.vm is not None
    since = len(node.vm.lines)
    url = node.files.url("fail.upgrade", bundles["fail"])
    result = node.osctl("upgrade", "--image", url, "--wait", "--wait-timeout", str(2 * BOOT_TIMEOUT),
                        timeout=3 * BOOT_TIMEOUT)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # --wait: the node did not keep it
    assert "downloading" in result.stderr
    assert f"back on {__version__} in slot A: the upgrade to" in result.stderr, result.stderr
    node.vm.wait_for(r"slots: booted slot B .*, on trial", BOOT_TIMEOUT, since)
    node.vm.wait_for(r"fails on purpose", BOOT_TIMEOUT, since)
    node.vm.wait_for(r"slots: booted slot A", BOOT_TIMEOUT, since)
    node.wait_up(since)
    assert node.version()["tag"] == __version__
    assert node.slots()["A"] == ("good", __version__, True, True)
    assert node.slots()["B"][0] == "failed"
    table = node.osctl("version")
    assert f"last upgrade failed: the upgrade to {__version__} in slot B did not become ready" in table.stdout
    refused = node.osctl("rollback")
    assert refused.returncode == 1 and "cannot roll back: slot B holds" in refused.stderr
    assert "whose upgrade failed; the node stays on slot A" in refused.stderr


def test_killing_qemu_while_a_slot_is_written_leaves_a_good_node(
    bios_node: Node, bundles: dict[str, Path]
) -> None:
    node = bios_node
    assert node.vm is not None
    url = node.files.url("next.upgrade", bundles["next"])
    exe = Path(sys.executable).with_name("osctl")
    argv = [str(exe), "--talosconfig", str(node.talosconfig), "-e", node.endpoint, "upgrade", "--image", url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "writing root" in line and " 0% " not in line:
            break
    else:
        raise AssertionError("".join(seen))
    node.vm.stop()  # the power cut: in the middle of the root partition's write
    proc.kill()
    proc.wait(30)
    node.start()
    node.wait_up(0)
    assert node.version()["tag"] == __version__
    slots = node.slots()
    assert slots["A"] == ("good", __version__, True, True) and slots["B"][0] == "writing"
    refused = node.osctl("rollback")
    assert refused.returncode == 1 and "was being written when the node stopped" in refused.stderr


@pytest.fixture(scope="module")
def uefi_node(
    baked_image: BakeResult, configs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    yield from make_node("uefi", baked_image, configs, tmp_path_factory.mktemp("uefi"))


def test_uefi_upgrade_from_a_url_boots_n_plus_1(uefi_node: Node, bundles: dict[str, Path]) -> None:
    node = uefi_node
    started = time.monotonic()
    upgrade_and_come_back(node, node.files.url("next.upgrade", bundles["next"]), NEXT)
    assert node.version()["tag"] == NEXT, f"after {time.monotonic() - started:.0f} s"
    assert node.slots()["B"] == ("good", NEXT, True, True)
