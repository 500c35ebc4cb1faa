"""The pure parts of `osctl cluster`: node plan, state, preflight refusals, the commands it would run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from talos_os.cluster import create, health, netns, vm
from talos_os.cluster.state import (
    ClusterError,
    ClusterState,
    Node,
    check_memory,
    forward_targets,
    plan_nodes,
)


def state_for(tmp_path: Path, controlplanes: int = 1, workers: int = 2) -> ClusterState:
    nodes = plan_nodes("demo", controlplanes=controlplanes, workers=workers)
    return ClusterState(
        name="demo",
        directory=tmp_path / "demo",
        cidr="10.5.0.0/24",
        image=str(tmp_path / "talos-kvm.raw"),
        nodes=nodes,
    )


def test_nodes_are_planned_in_boot_order_with_stable_addresses_and_macs() -> None:
    nodes = plan_nodes("demo", controlplanes=2, workers=2, memory_mb=4096, worker_memory_mb=1536)
    assert [(n.name, n.role, n.address) for n in nodes] == [
        ("demo-controlplane-1", "init", "10.5.0.2"),
        ("demo-controlplane-2", "controlplane", "10.5.0.3"),
        ("demo-worker-1", "worker", "10.5.0.4"),
        ("demo-worker-2", "worker", "10.5.0.5"),
    ]
    assert [n.mac for n in nodes] == [f"52:54:00:05:00:0{i}" for i in (2, 3, 4, 5)]
    assert [n.tap for n in nodes] == ["tap0", "tap1", "tap2", "tap3"]
    assert [n.memory_mb for n in nodes] == [4096, 4096, 1536, 1536]
    assert nodes == plan_nodes("demo", controlplanes=2, workers=2, memory_mb=4096, worker_memory_mb=1536)


@pytest.mark.parametrize(
    ("controlplanes", "workers", "cidr", "words"),
    [
        (0, 1, "10.5.0.0/24", "at least one control plane"),
        (1, 5, "10.5.0.0/29", "do not fit in 10.5.0.0/29"),
        (1, 1, "fd00::/64", "must be IPv4"),
    ],
)
def test_impossible_plans_are_refused(controlplanes: int, workers: int, cidr: str, words: str) -> None:
    with pytest.raises(ClusterError, match=words):
        plan_nodes("demo", controlplanes=controlplanes, workers=workers, cidr=cidr)


def test_forwards_cover_every_osd_and_each_control_planes_api_and_etcd() -> None:
    targets = forward_targets(plan_nodes("demo", controlplanes=1, workers=1))
    assert targets == {
        "demo-controlplane-1:osd": ("10.5.0.2", 50000),
        "demo-controlplane-1:api": ("10.5.0.2", 6443),
        "demo-controlplane-1:etcd": ("10.5.0.2", 2379),
        "demo-worker-1:osd": ("10.5.0.3", 50000),
    }


def test_state_round_trips_and_names_missing_things(tmp_path: Path) -> None:
    state = state_for(tmp_path)
    state.forwards = {"demo-controlplane-1:osd": 40001}
    state.save()
    loaded = ClusterState.load(state.directory)
    assert loaded == state
    assert loaded.endpoint(loaded.nodes[0], "osd") == "127.0.0.1:40001"
    with pytest.raises(ClusterError, match="forwards no api port for demo-worker-1"):
        loaded.endpoint(loaded.nodes[1], "api")
    with pytest.raises(ClusterError, match="has no node 'nope'"):
        loaded.node("nope")
    with pytest.raises(ClusterError, match="no cluster state at"):
        ClusterState.load(tmp_path / "other")
    assert (loaded.gateway, loaded.netns, loaded.netmask) == ("10.5.0.1", "talos-demo", "255.255.255.0")
    # a state written before nodes booted from their disks (it named a kernel for QEMU) still loads
    older = json.loads(state.file("state.json").read_text()) | {
        "kernel": "/k",
        "initramfs": "/i",
        "cmdline": "",
    }
    state.file("state.json").write_text(json.dumps(older))
    assert ClusterState.load(state.directory) == state


def test_memory_that_does_not_fit_is_refused_in_one_sentence() -> None:
    nodes = plan_nodes("demo", controlplanes=1, workers=2, memory_mb=4096, worker_memory_mb=2048)
    check_memory(nodes, available_mb=9300)
    with pytest.raises(ClusterError) as err:
        check_memory(nodes, available_mb=8000)
    assert str(err.value).count(". ") == 0 and "need 8192 MiB but only 8000 MiB" in str(err.value)


def opts(tmp_path: Path, **kw: object) -> create.CreateOptions:
    image = tmp_path / "talos-kvm.raw"
    image.write_bytes(b"\0" * 4096)
    base: dict[str, object] = {"name": "demo", "root": tmp_path / "clusters", "image": image}
    return create.CreateOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_preflight_passes_a_sane_request(tmp_path: Path) -> None:
    nodes = create.preflight(opts(tmp_path, workers=2), available_mb=20000, euid=0)
    assert len(nodes) == 3
    assert not (tmp_path / "clusters").exists()  # nothing written


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"name": "Bad_Name"}, "cluster name 'Bad_Name' is invalid"),
        ({"image": Path("/nonexistent/talos.raw")}, "image /nonexistent/talos.raw does not exist"),
        ({"config_dir": Path("/nonexistent")}, "lacks init.yaml"),
        ({"memory_mb": 30000}, "lower --memory"),
    ],
)
def test_preflight_refuses_before_starting_anything(
    tmp_path: Path, change: dict[str, object], words: str
) -> None:
    options = opts(tmp_path)
    for key, value in change.items():
        setattr(options, key, value)
    with pytest.raises(ClusterError, match=words):
        create.preflight(options, available_mb=20000, euid=0)
    assert not (tmp_path / "clusters").exists()


def test_preflight_refuses_a_taken_name_and_non_root(tmp_path: Path) -> None:
    options = opts(tmp_path)
    with pytest.raises(ClusterError, match="needs root"):
        create.preflight(options, available_mb=20000, euid=1000)
    (tmp_path / "clusters" / "demo").mkdir(parents=True)
    with pytest.raises(
        ClusterError, match=r"cluster demo already exists .*osctl cluster destroy --name demo"
    ):
        create.preflight(options, available_mb=20000, euid=0)


def test_node_configs_carry_the_node_name_and_the_roles_config() -> None:
    nodes = plan_nodes("demo", controlplanes=1, workers=1)
    configs = create.cluster_configs(create.CreateOptions(name="demo", root=Path("/x")), nodes)
    init = yaml.safe_load(create.node_config(configs, nodes[0]))
    worker = yaml.safe_load(create.node_config(configs, nodes[1]))
    assert init["machine"]["type"] == "init" and worker["machine"]["type"] == "worker"
    assert init["machine"]["network"]["hostname"] == "demo-controlplane-1"
    assert worker["machine"]["network"]["hostname"] == "demo-worker-1"
    assert init["cluster"]["controlPlane"]["endpoint"] == "https://10.5.0.2:6443"
    assert (
        "127.0.0.1" in init["machine"]["certSANs"]
        and "127.0.0.1" in init["cluster"]["kubernetes"]["certSANs"]
    )


def test_network_commands_stay_inside_the_namespace(tmp_path: Path) -> None:
    state = state_for(tmp_path)
    cmds = netns.setup_commands(state)
    assert cmds[0] == ["ip", "netns", "add", "talos-demo"]
    assert all(c[:3] == ["ip", "-n", "talos-demo"] for c in cmds[1:])  # never the host's interfaces
    assert ["ip", "-n", "talos-demo", "addr", "add", "10.5.0.1/24", "dev", "br0"] in cmds
    assert sum(c[3:5] == ["tuntap", "add"] for c in cmds) == 3
    argv = netns.dnsmasq_argv(state)
    assert argv[:4] == ["ip", "netns", "exec", "talos-demo"]
    assert "--port=0" in argv and "--interface=br0" in argv and "--bind-interfaces" in argv
    assert "--dhcp-host=52:54:00:05:00:04,10.5.0.4,demo-worker-2" in argv
    assert "--dhcp-range=10.5.0.0,static,255.255.255.0,12h" in argv


def test_qemu_runs_in_the_namespace_on_an_overlay_with_the_config_over_fw_cfg(tmp_path: Path) -> None:
    state = state_for(tmp_path)
    node = state.nodes[1]
    image = vm.Image(tmp_path / "talos-kvm.raw", "raw")
    argv = vm.qemu_argv(state, node, image, kvm=False)
    d = state.node_dir(node)
    assert argv[:8] == ["ip", "netns", "exec", "talos-demo", "nice", "-n", "0", "qemu-system-x86_64"]
    init = vm.qemu_argv(state, state.nodes[0], image, kvm=False)  # the init node goes first for the CPU
    assert state.nodes[0].role == "init" and init[4:7] == ["nice", "-n", "-10"]
    joined = " ".join(argv)
    assert f"-pidfile {d / 'qemu.pid'}" in joined and "-daemonize" in argv
    assert (
        f"file={d / 'disk.qcow2'},format=qcow2,if=virtio,cache=writeback" in joined
    )  # a power cut keeps what was flushed
    assert "tap,id=n0,ifname=tap1,script=no,downscript=no" in argv
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:05:00:03" in argv
    assert f"name=opt/talos/config,file={d / 'config.yaml'}" in argv
    assert f"path={d / 'serial.log'},append=on" in joined
    assert "-accel tcg,thread=multi" in joined and "-m 2048" in joined
    # the node boots its disk through the firmware and GRUB, so an upgrade's next boot can pick slot B
    assert "-kernel" not in argv and "-append" not in argv
    assert "-accel kvm" in " ".join(vm.qemu_argv(state, node, image, kvm=True))


def test_an_image_must_boot_the_kvm_platform_without_a_config_url(tmp_path: Path) -> None:
    raw = tmp_path / "talos-kvm.raw"
    raw.write_bytes(b"\0" * 512)
    assert vm.find_image(raw) == vm.Image(raw.resolve(), "raw")  # no manifest: nothing to check
    manifest = tmp_path / "talos-kvm.raw.manifest.json"
    manifest.write_text(json.dumps({"cmdline": "console=ttyS0 talos.platform=kvm talos.root=ROOT-A"}))
    assert vm.find_image(raw).format == "raw"
    manifest.write_text(json.dumps({"cmdline": "console=ttyS0 talos.platform=metal"}))
    with pytest.raises(ClusterError, match=r"baked for the metal platform: .*--platform kvm"):
        vm.find_image(raw)
    manifest.write_text(json.dumps({"cmdline": "talos.platform=kvm talos.config=http://10.0.2.2/c.yaml"}))
    with pytest.raises(ClusterError, match=r"config URL on its kernel command line: .*without --config-url"):
        vm.find_image(raw)
    qcow = tmp_path / "x.qcow2"
    qcow.write_bytes(b"QFI\xfb" + b"\0" * 100)
    assert vm.find_image(qcow).format == "qcow2"


class FakeEtcd:
    """Stands in for health.Cluster's etcd calls: canned answers per control plane."""

    def __init__(
        self, state: ClusterState, members: dict[str, list[str]], unhealthy: frozenset[str] = frozenset()
    ) -> None:
        self.state = state
        self.members = members
        self.unhealthy = unhealthy

    def etcd(self, node: Node, path: str, body: bytes | None = None) -> dict[str, object]:
        if node.name not in self.members:
            raise ConnectionError("refused")
        if path == "/health":
            return {"health": "false" if node.name in self.unhealthy else "true"}
        return {"members": [{"ID": str(i), "name": n} for i, n in enumerate(self.members[node.name])]}


def test_etcd_members_must_list_every_control_plane_and_agree(tmp_path: Path) -> None:
    state = state_for(tmp_path, controlplanes=2, workers=0)
    cp1, cp2 = (n.name for n in state.nodes)
    good = health.check_etcd(FakeEtcd(state, {cp1: [cp1, cp2], cp2: [cp2, cp1]}))  # type: ignore[arg-type]
    assert good.ok
    split = health.check_etcd(FakeEtcd(state, {cp1: [cp1], cp2: [cp1, cp2]}))  # type: ignore[arg-type]
    assert f"{cp1}: etcd members lack {cp2} (have {cp1})" in split.failures
    assert any(f.startswith("etcd members disagree") for f in split.failures)
    down = health.check_etcd(FakeEtcd(state, {cp1: [cp1, cp2]}, unhealthy={cp1}))  # type: ignore[arg-type]
    assert f"{cp2}: etcd does not answer (refused)" in down.failures
    assert any(f.startswith(f"{cp1}: etcd reports unhealthy") for f in down.failures)


def test_node_readiness_is_read_from_the_ready_condition() -> None:
    items: list[dict[str, Any]] = [
        {"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "b"}, "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                                               {"type": "Ready", "status": "Unknown"}]}},
        {"metadata": {"name": "c"}, "status": {}},
    ]  # fmt: skip
    assert health.node_conditions(items) == {"a": "True", "b": "Unknown", "c": "Unknown"}


def test_cleanup_messages_never_stop_the_cleanup() -> None:
    """Once the reader of stderr is gone (EPIPE), create's cleanup must still run to its end."""
    from talos_os.cluster.create import _never_fails

    def broken(_line: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    _never_fails(broken)("cleaning up cluster x")  # no exception
    said: list[str] = []
    _never_fails(said.append)("kept")
    assert said == ["kept"]
