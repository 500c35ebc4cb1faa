"""The pure parts of maintenance mode and apply-config: config diffs and modes, the pushed config's
checks, the ISO's image map, fingerprints, the disk listing and the console lines."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from talos_os.config import loads
from talos_os.config.generate import generate
from talos_os.init import maintenance as init_maintenance
from talos_os.init import reconfigure
from talos_os.install import image, writer
from talos_os.install.disk import Target
from talos_os.maintenance import disks, push, tls

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    g = generate("units", "https://10.5.0.2:6443")
    other = generate("other", "https://10.5.0.2:6443")
    return {"worker": g.worker, "controlplane": g.controlplane, "other": other.worker}


def edited(text: str, **machine: object) -> str:
    doc = yaml.safe_load(text)
    for key, value in machine.items():
        if value is None:
            doc["machine"].pop(key, None)
        else:
            doc["machine"][key] = value
    return yaml.safe_dump(doc, sort_keys=False)


# --- reconfigure: what changed, live or at reboot, and the modes --------------------------------


def test_changes_are_split_into_live_and_reboot(cluster: dict[str, str]) -> None:
    old = loads(edited(cluster["worker"], sysctls={"vm.swappiness": "10", "net.ipv4.tcp_fin_timeout": "30"}))
    new = loads(
        edited(
            cluster["worker"],
            sysctls={"vm.swappiness": "20"},
            network={"hostname": "w1", "nameservers": ["10.0.2.9"]},
            env={"HTTP_PROXY": "http://proxy:3128"},
        )
    )
    found = {c.path: c.live for c in reconfigure.changes(old, new)}
    assert found == {
        "machine.sysctls.vm.swappiness": True,  # changed: written now
        "machine.sysctls.net.ipv4.tcp_fin_timeout": False,  # removed: the kernel keeps it until a reboot
        "machine.network.hostname": True,
        "machine.network.nameservers": True,  # the network manager runs again with the new settings
        "machine.env.HTTP_PROXY": False,
    }
    assert reconfigure.changes(old, old) == []


def test_modes_decide_what_happens() -> None:
    live = [reconfigure.Change("machine.sysctls.vm.swappiness", True)]
    mixed = [*live, reconfigure.Change("machine.env.HTTP_PROXY", False)]
    assert reconfigure.plan([], "auto") == "none"
    assert reconfigure.plan(live, "auto") == "live"
    assert reconfigure.plan(mixed, "auto") == "reboot"
    assert reconfigure.plan(live, "no-reboot") == "live"
    with pytest.raises(
        reconfigure.ReconfigureError,
        match=r"machine.env.HTTP_PROXY cannot change without a reboot: use --mode reboot",
    ):
        reconfigure.plan(mixed, "no-reboot")
    assert reconfigure.plan(live, "reboot") == "reboot"
    assert reconfigure.plan(mixed, "staged") == "staged"
    with pytest.raises(reconfigure.ReconfigureError, match="unknown mode 'later'"):
        reconfigure.plan(live, "later")


def test_a_live_network_change_is_reported_link_by_link() -> None:
    from talos_os.init.network import LinkState, NetworkState

    state = NetworkState(
        (
            LinkState("eth0", 2, None, "static", True, ("10.0.2.20/24",)),
            LinkState("eth1", 3, None, "dhcp", False),
        ),
        nameservers=("10.0.2.9",),
    )
    assert reconfigure.network_summary(state) == (
        "network eth0 10.0.2.20/24 (static); eth1 no address yet (dhcp); nameservers 10.0.2.9"
    )
    assert reconfigure.network_summary(NetworkState()) == "network no links; nameservers none"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def effects(self) -> reconfigure.Effects:
        return reconfigure.Effects(
            save=lambda data: self.calls.append("save"),
            publish=lambda data: self.calls.append("publish"),
            apply_live=lambda cfg: self.calls.append("live") or ["sysctls vm.swappiness=20"],  # type: ignore[func-returns-value]
            reboot=lambda: self.calls.append("reboot"),
        )


def test_apply_carries_out_the_plan(cluster: dict[str, str]) -> None:
    old = loads(cluster["worker"])
    text = edited(cluster["worker"], sysctls={"vm.swappiness": "20"})
    new = loads(text)
    for mode, dry, calls, action in (
        ("auto", False, ["save", "publish", "live"], "live"),
        ("reboot", False, ["save", "publish", "reboot"], "reboot"),
        ("staged", False, ["save"], "staged"),
        ("auto", True, [], "live"),
    ):
        rec = Recorder()
        result = reconfigure.apply(old, new, text.encode(), mode, dry, rec.effects())
        assert rec.calls == calls and result["action"] == action, mode
        assert result["changes"] == [{"path": "machine.sysctls.vm.swappiness", "live": True}]
    assert "dry run" in reconfigure.apply(old, new, b"", "auto", True, Recorder().effects())["message"]


def test_a_config_of_another_cluster_is_refused(cluster: dict[str, str]) -> None:
    rec = Recorder()
    with pytest.raises(reconfigure.ReconfigureError, match=r"another cluster: its machine.ca \(the OS CA\)"):
        reconfigure.apply(
            loads(cluster["worker"]), loads(cluster["other"]), b"", "auto", False, rec.effects()
        )
    assert rec.calls == []


def test_the_control_op_validates_first(cluster: dict[str, str]) -> None:
    import base64

    from talos_os.lib.control import ControlError

    rec = Recorder()
    current = [loads(cluster["worker"])]
    ops = reconfigure.control_handlers(lambda: current[0], lambda c: current.__setitem__(0, c), rec.effects())
    with pytest.raises(ControlError, match=r"config is invalid \(1 error\):\n  machine.type"):
        ops["apply_config"](
            {"data": base64.b64encode(edited(cluster["worker"], type="master").encode()).decode()}
        )
    assert rec.calls == []
    text = edited(cluster["worker"], sysctls={"vm.swappiness": "20"})
    result = ops["apply_config"]({"data": base64.b64encode(text.encode()).decode(), "mode": "auto"})
    assert result["action"] == "live" and current[0].machine.sysctls == {"vm.swappiness": "20"}


# --- the pushed config ---------------------------------------------------------------------------


def test_push_refusals_are_one_sentence(cluster: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(push.PushError, match=r"config is invalid[\s\S]*invalid YAML"):
        push.check_push(b"machine: [\n", None)
    with pytest.raises(push.PushError, match=r"machine.type"):
        push.check_push(edited(cluster["worker"], type="master").encode(), None)
    sysfs = tmp_path / "sys"
    (sysfs / "class/block/vda").mkdir(parents=True)
    (sysfs / "class/block/vda/size").write_text(str(4 * MiB // 512 * 1024))
    missing = edited(cluster["worker"], install={"disk": "/dev/nosuchdisk"}).encode()
    with pytest.raises(
        push.PushError,
        match=r"^machine.install.disk: /dev/nosuchdisk does not exist on this node: choose one of /dev/vda",
    ):
        push.check_push(missing, 100 * MiB, sys_root=sysfs)
    with pytest.raises(push.PushError, match=r"^machine.install.disk: /dev/null is neither a block device"):
        push.check_push(edited(cluster["worker"], install={"disk": "/dev/null"}).encode(), 100 * MiB)
    # not booted from the ISO: install is ignored; without install.disk on the ISO: runs from memory
    assert push.check_push(missing, None).action == "boot"
    assert "runs from the ISO" in push.check_push(edited(cluster["worker"], install=None).encode(), 1).message


# --- the ISO's image -----------------------------------------------------------------------------


def test_image_pack_and_runs_rebuild_the_raw_image(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(512)
        f.write(b"EFI PART" + os.urandom(100))
        f.seek(3 * MiB + 100)
        f.write(os.urandom(2 * MiB))  # spans the start of the "squashfs" at 4 MiB
        f.seek(4 * MiB)
        f.write(b"hsqs" + os.urandom(MiB))
        f.seek(15 * MiB)
        f.write(b"backup")
    root = tmp_path / "root.sqsh"
    root.write_bytes(raw.read_bytes()[4 * MiB : 4 * MiB + 2 * MiB])
    data = tmp_path / "image.bin"
    mapping = image.pack(raw, (4 * MiB, 2 * MiB), data)
    assert mapping.sha256 == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert data.stat().st_size < 2 * MiB, "the squashfs is not stored twice"
    assert {p[2] for p in mapping.pieces} == {"data", "root"}
    again = image.ImageMap.from_json(mapping.to_json())
    out = tmp_path / "out.raw"
    target = Target(out, block=False, size=0, exists=False)
    _data, _zeroed, digest = writer.write(image.runs(again, data, root), again.size, target)
    assert digest == mapping.sha256 and out.read_bytes() == raw.read_bytes()


def test_a_damaged_map_is_refused() -> None:
    with pytest.raises(Exception, match="rebuild the ISO with talos-bake iso"):
        image.ImageMap.from_json('{"format": 9}')


# --- fingerprints, disks, console ---------------------------------------------------------------


def test_fingerprints() -> None:
    cert, _key = tls.self_signed("talos-maintenance")
    fp = tls.fingerprint(cert)
    assert len(fp) == 64 and tls.normalize(":".join(fp[i : i + 2].upper() for i in range(0, 64, 2))) == fp
    with pytest.raises(ValueError, match="64 hex digits"):
        tls.normalize("abc")


def test_disks_from_sysfs(tmp_path: Path) -> None:
    block = tmp_path / "class/block"
    for name, files in {
        "vda": {"size": "8388608", "serial": "disk-1", "ro": "0", "removable": "0", "queue/rotational": "1"},
        "vda1": {"size": "2048", "partition": "1"},
        "sr0": {"size": "0", "device/model": "QEMU DVD-ROM", "removable": "1"},
        "loop0": {"size": "100"},
        "sda": {"size": "2097152", "device/model": "QEMU HARDDISK", "device/serial": "QM0001"},
    }.items():
        for rel, text in files.items():
            (block / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (block / name / rel).write_text(text + "\n")
    found = disks.list_disks(tmp_path, probe=False)
    assert [(d.path, d.size, d.model, d.serial, d.rotational) for d in found] == [
        ("/dev/sda", 1 << 30, "QEMU HARDDISK", "QM0001", False),
        ("/dev/sr0", 0, "QEMU DVD-ROM", "", False),
        ("/dev/vda", 4 << 30, "", "disk-1", True),
    ]
    assert found[1].contents == "empty drive" and found[1].removable


def test_console_lines_say_how_to_continue() -> None:
    lines = init_maintenance.console_lines(["10.0.2.15"], 50000, "ab" * 32)
    assert "port 50000" in lines[0] and lines[1] == "maintenance: addresses 10.0.2.15"
    assert (
        f"osctl apply-config --insecure -n 10.0.2.15 --file CONFIG.yaml --cert-fingerprint {'ab' * 32}"
        in lines[-1]
    )


def test_the_iso_menu_boots_an_installed_disk_first() -> None:
    import struct
    import uuid

    from bakery import iso

    fs_uuid = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    superblock = bytearray(1024)
    struct.pack_into("<H", superblock, 0x38, 0xEF53)
    superblock[0x68:0x78] = fs_uuid.bytes
    assert iso.boot_fs_uuid(bytes(superblock)) == str(fs_uuid)
    assert iso.boot_fs_uuid(bytes(1024)) is None
    entry = iso.installed_entry(str(fs_uuid))
    assert f"search --no-floppy --fs-uuid --set=installed {fs_uuid}" in entry
    assert (
        'set default="talos-os (installed disk)"' in entry
        and "configfile ($root)/boot/grub/grub.cfg" in entry
    )


def test_install_disk_checks_name_the_fix(tmp_path: Path) -> None:
    from talos_os.install import disk as install_disk

    system = install_disk.System(
        mountinfo=tmp_path / "mountinfo", swaps=tmp_path / "swaps", sys=tmp_path / "sys"
    )
    system.mountinfo.write_text("")
    hint = {
        "force_hint": "set machine.install.wipe: true to overwrite it",
        "smaller_hint": "choose a larger disk",
    }
    used = tmp_path / "used.raw"
    with open(used, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(512)
        f.write(b"EFI PART")
    target = install_disk.inspect_target(used)
    with pytest.raises(
        install_disk.InstallError, match=r"holds a GPT partition table; set machine.install.wipe: true"
    ):
        install_disk.check(target, 4 * MiB, False, system, **hint)
    assert install_disk.check(target, 4 * MiB, True, system, **hint) == ["a GPT partition table"]
    with pytest.raises(
        install_disk.InstallError, match=r"has 8 MiB but the image needs 16 MiB: choose a larger disk"
    ):
        install_disk.check(target, 16 * MiB, True, system, **hint)
    system.mountinfo.write_text(f"36 25 0:99 / /mnt rw - ext4 {used} rw\n")
    with pytest.raises(install_disk.InstallError, match=r"is mounted on /mnt; unmount or release it first"):
        install_disk.check(target, 4 * MiB, True, system, **hint)
