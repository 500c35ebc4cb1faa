"""Bare-metal config sources: URL variables and the NoCloud fallback, on a fake sysfs tree."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from platforms.bare_metal import sources
from platforms.bare_metal.sources import NodeFacts, SubstitutionError
from talos_os.plugins.nocloud import BlockDevice

FACTS = NodeFacts(
    uuid="4c4c4544-0042-4410-8051-b4c04f4e4e32",
    mac="52:54:00:12:34:56",
    hostname="node-1",
    serial="SN 42/7",
)


def fake_node(root: Path, *, cmdline: str = "ro", hostname: str = "node-1") -> Path:
    files = {
        "proc/cmdline": cmdline,
        "proc/sys/kernel/hostname": hostname,
        "sys/class/dmi/id/product_uuid": "4C4C4544-0042-4410-8051-B4C04F4E4E32",
        "sys/class/dmi/id/product_serial": "CN7016",
        "sys/class/net/lo/address": "00:00:00:00:00:00",
        "sys/class/net/eno1/address": "AA:BB:CC:00:00:01",
        "sys/class/net/eno1/operstate": "down",
        "sys/class/net/eno2/address": "aa:bb:cc:00:00:02",
        "sys/class/net/eno2/operstate": "up",
        "sys/class/net/br0/address": "aa:bb:cc:00:00:99",
        "sys/class/net/br0/operstate": "up",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    for nic in ("eno1", "eno2"):
        (root / "sys/class/net" / nic / "device").mkdir()
    return root


def test_substitute_all_variables() -> None:
    url = "http://10.0.0.1/c/${uuid}/${mac}/${hostname}/${serial}.yaml?x=$HOME"
    assert sources.substitute(url, FACTS) == (
        "http://10.0.0.1/c/4c4c4544-0042-4410-8051-b4c04f4e4e32/52:54:00:12:34:56/node-1/SN%2042%2F7.yaml?x=$HOME"
    )
    assert sources.substitute("http://h/plain.yaml", FACTS) == "http://h/plain.yaml"
    assert sources.substitute("http://h/${mac}", {"mac": "aa:bb:cc:dd:ee:ff"}) == "http://h/aa:bb:cc:dd:ee:ff"


def test_substitute_errors() -> None:
    with pytest.raises(SubstitutionError, match=r"unknown variable \$\{ip\}"):
        sources.substitute("http://h/${ip}", FACTS)
    with pytest.raises(SubstitutionError, match="does not know its hostname"):
        sources.substitute("http://h/${hostname}", NodeFacts(hostname="(none)"))
    with pytest.raises(SubstitutionError, match="does not know its uuid"):
        sources.substitute("http://h/${uuid}", NodeFacts())


def test_node_facts_from_tree(tmp_path: Path) -> None:
    facts = sources.node_facts(fake_node(tmp_path))
    # eno2 is the physical NIC that is up; br0 is up too but virtual (no device link).
    assert facts == NodeFacts(
        uuid="4c4c4544-0042-4410-8051-b4c04f4e4e32",
        mac="aa:bb:cc:00:00:02",
        hostname="node-1",
        serial="CN7016",
    )


def test_bootif_wins_for_mac(tmp_path: Path) -> None:
    root = fake_node(tmp_path, cmdline="BOOTIF=01-AA-BB-CC-00-00-01 talos.config=http://h/${mac}")
    assert sources.node_facts(root).mac == "aa:bb:cc:00:00:01"


def test_mac_fallback_to_first_physical(tmp_path: Path) -> None:
    root = fake_node(tmp_path)
    (root / "sys/class/net/eno2/operstate").write_text("down\n")
    assert sources.primary_mac(root) == "aa:bb:cc:00:00:01"
    assert sources.primary_mac(tmp_path / "nothing") is None


def test_discover_substitutes(tmp_path: Path) -> None:
    root = fake_node(tmp_path)
    ref = sources.discover_config("talos.config=http://10.0.0.1:8080/${mac}.yaml", root=root)
    assert ref is not None and ref.url == "http://10.0.0.1:8080/aa:bb:cc:00:00:02.yaml"
    ref = sources.discover_config("talos.config=http://h/${uuid}", facts=FACTS, root=tmp_path / "unused")
    assert ref is not None and ref.url == "http://h/4c4c4544-0042-4410-8051-b4c04f4e4e32"
    # No variables: nothing is read from the node at all.
    ref = sources.discover_config("talos.config=http://h/fixed.yaml", root=tmp_path / "absent")
    assert ref is not None and ref.url == "http://h/fixed.yaml"


def test_discover_falls_back_to_nocloud(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "user-data").write_bytes(b"machine: {}\n")
    mounted: list[str] = []

    @contextlib.contextmanager
    def mount(dev: BlockDevice) -> Iterator[Path]:
        mounted.append(dev.path)
        yield seed

    devs = [BlockDevice("/dev/sda", None, None), BlockDevice("/dev/sdb1", "CIDATA", "vfat")]
    ref = sources.discover_config("ro", devices=devs, mount=mount)
    assert ref is not None and ref.data == b"machine: {}\n"
    assert mounted == ["/dev/sdb1"]
    assert sources.discover_config("ro", devices=[], mount=mount) is None
    ref = sources.discover_config("ro", smbios_serial="ds=nocloud;s=http://10.0.0.1/seed/")
    assert ref is not None and ref.url == "http://10.0.0.1/seed/user-data"
