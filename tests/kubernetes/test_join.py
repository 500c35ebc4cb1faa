"""Joining nodes, on the host: kubeadm's JoinConfiguration, the files a control plane needs, the
discovery hash, the services of each role, the idempotent join, and the routes between nodes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from talos_os.config import MachineConfig, loads
from talos_os.config.generate import generate
from talos_os.init.services import Identity, KubernetesPlan, node_services
from talos_os.kubernetes import join, kubeadm, routes

FACTS = kubeadm.NodeFacts("worker-1", "10.5.0.3")


@pytest.fixture(scope="module")
def configs() -> dict[str, MachineConfig]:
    gen = generate("joins", "https://10.5.0.2:6443")
    return {"init": loads(gen.init), "controlplane": loads(gen.controlplane), "worker": loads(gen.worker)}


def test_discovery_hash_is_the_sha256_of_the_cluster_cas_public_key(
    configs: dict[str, MachineConfig],
) -> None:
    ca = configs["worker"].cluster.ca
    spki = ca.certificate().public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert join.ca_cert_hash(ca) == "sha256:" + hashlib.sha256(spki).hexdigest()
    # The same as openssl's pipeline kubeadm documents, from the PEM alone.
    pub = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout"], input=ca.crt_pem, capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True, check=True
    )
    assert join.ca_cert_hash(ca) == "sha256:" + hashlib.sha256(der.stdout).hexdigest()


def test_worker_join_configuration(configs: dict[str, MachineConfig]) -> None:
    cfg = configs["worker"]
    doc = yaml.safe_load(join.join_config(cfg, FACTS))
    assert doc["kind"] == "JoinConfiguration" and doc["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    # File discovery: token discovery reads cluster-info anonymously, which anonymous-auth=false refuses.
    assert doc["discovery"] == {
        "file": {"kubeConfigPath": "/etc/kubernetes/discovery.conf"},
        "tlsBootstrapToken": cfg.cluster.token,
    }
    discovery = yaml.safe_load(join.discovery_kubeconfig(cfg))
    cluster = discovery["clusters"][0]["cluster"]
    assert cluster["server"] == "https://10.5.0.2:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == cfg.cluster.ca.crt_pem
    assert discovery["users"][0]["user"] == {"token": cfg.cluster.token}
    reg = doc["nodeRegistration"]
    assert reg["name"] == "worker-1" and reg["criSocket"] == kubeadm.CRI_SOCKET
    assert reg["kubeletExtraArgs"] == [{"name": "node-ip", "value": "10.5.0.3"}]
    assert "controlPlane" not in doc and doc["timeouts"]["tlsBootstrap"] == "10m0s"
    files = join.join_files(cfg, FACTS)
    assert [(str(f.path), f.mode) for f in files] == [
        ("/etc/kubernetes/discovery.conf", 0o600),
        ("/etc/kubernetes/kubeadm-join.yaml", 0o600),
    ]
    assert join.join_argv() == [
        "/usr/bin/kubeadm",
        "join",
        "--config",
        "/etc/kubernetes/kubeadm-join.yaml",
        "--v=1",
    ]
    assert yaml.safe_load(join.join_files(cfg, FACTS)[1].content)["nodeRegistration"][
        "ignorePreflightErrors"
    ] == (kubeadm.IGNORED_PREFLIGHT)


def test_control_plane_join_brings_the_shared_ca_material(configs: dict[str, MachineConfig]) -> None:
    cfg = configs["controlplane"]
    facts = kubeadm.NodeFacts("cp-2", "10.5.0.4")
    doc = yaml.safe_load(join.join_config(cfg, facts))
    assert doc["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": "10.5.0.4", "bindPort": 6443}}
    assert doc["patches"] == {"directory": str(kubeadm.PATCHES_DIR)}
    files = {str(f.path): f for f in join.join_files(cfg, facts)}
    for name in ("ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.key", "etcd/ca.key"):
        assert f"/etc/kubernetes/pki/{name}" in files
    assert files["/etc/kubernetes/pki/ca.key"].mode == 0o600
    assert str(kubeadm.CONFIG_PATH) not in files  # no InitConfiguration on a joining node
    assert "/etc/kubernetes/encryption/config.yaml" in files and "/etc/kubernetes/audit/policy.yaml" in files
    assert "/etc/kubernetes/patches/kube-apiserver+json.json" in files


def fake_kubeadm(tmp_path: Path, code: int) -> str:
    script = tmp_path / "kubeadm"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\nexit {code}\n')
    script.chmod(0o755)
    return str(script)


def test_join_is_idempotent_and_reruns_over_leftovers(
    configs: dict[str, MachineConfig], tmp_path: Path
) -> None:
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(generate_text := generate("joins", "https://10.5.0.2:6443").worker)
    assert generate_text
    root = tmp_path / "root"
    failing = fake_kubeadm(tmp_path, 3)
    assert join.join(cfg_path, FACTS, root, failing) == 3
    assert not (root / "var/lib/talos/kubernetes/joined").exists()
    written = root / "etc/kubernetes/kubeadm-join.yaml"
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    # kubeadm left the bootstrap kubeconfig: the next attempt ignores its preflight errors.
    (root / "etc/kubernetes/bootstrap-kubelet.conf").write_text("x")
    (tmp_path / "kubeadm").unlink()
    ok = fake_kubeadm(tmp_path, 0)
    assert join.join(cfg_path, FACTS, root, ok) == 0
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "join --config /etc/kubernetes/kubeadm-join.yaml --v=1"
    # kubeadm refuses --ignore-preflight-errors=all next to a config listing checks: the config says all
    assert calls[1] == calls[0]
    retried = yaml.safe_load((root / "etc/kubernetes/kubeadm-join.yaml").read_text())
    assert retried["nodeRegistration"]["ignorePreflightErrors"] == ["all"]
    assert (root / "var/lib/talos/kubernetes/joined").exists()
    # Joined: a reboot runs no kubeadm at all.
    assert join.join(cfg_path, FACTS, root, ok) == 0
    assert len((tmp_path / "calls").read_text().splitlines()) == 2


def test_services_of_each_role() -> None:
    env_python = "/usr/bin/python3"
    cp = Identity(True, "cp-1", "10.5.0.2")
    plan = KubernetesPlan("cp-1", "10.5.0.2", bootstrap=True, pod_subnets=("10.244.0.0/16",))
    specs = {s.name: s for s in node_services(kubernetes=plan, identity=cp, python=env_python)}
    assert list(specs) == ["containerd", "osd", "trustd", "images", "kubeadm", "kubelet", "cni", "routes"]
    assert specs["osd"].depends == [] and "talos_os.trustd.server" in specs["trustd"].argv
    assert specs["routes"].argv[-1] == "--pod-subnet=10.244.0.0/16"
    worker = Identity(False, "worker-1", "10.5.0.3")
    assert "--after" not in specs["images"].argv  # the init node imports at once: it bootstraps
    plan = KubernetesPlan(
        "worker-1", "10.5.0.3", bootstrap=False, join=True, control_plane=False,
        control_plane_endpoint="10.5.0.2:6443",
    )  # fmt: skip
    specs = {s.name: s for s in node_services(kubernetes=plan, identity=worker, python=env_python)}
    assert specs["images"].argv[-2:] == ["--after", "10.5.0.2:6443"]
    assert list(specs) == ["containerd", "osd", "identity", "images", "kubeadm", "kubelet", "cni", "routes"]
    assert specs["osd"].depends == ["identity"] and specs["identity"].oneshot
    assert specs["identity"].argv[-4:] == ["--hostname", "worker-1", "--address", "10.5.0.3"]
    assert "talos_os.kubernetes.join" in specs["kubeadm"].argv
    assert specs["kubeadm"].depends == ["images", "identity"]
    plan = KubernetesPlan("cp-2", "10.5.0.4", bootstrap=False, join=True, control_plane=True)
    specs = {s.name: s for s in node_services(kubernetes=plan, identity=Identity(True, "cp-2", "10.5.0.4"))}
    assert specs["kubeadm"].depends == ["images"] and "trustd" in specs and "identity" not in specs


def node(name: str, cidrs: list[str], ips: list[str]) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {"podCIDR": cidrs[0] if cidrs else None, "podCIDRs": cidrs},
        "status": {"addresses": [{"type": "Hostname", "address": name}]
                   + [{"type": "InternalIP", "address": ip} for ip in ips]},
    }  # fmt: skip


def test_routes_to_every_other_nodes_pod_range() -> None:
    nodes = [
        node("cp-1", ["10.244.0.0/24"], ["10.5.0.2"]),
        node("worker-1", ["10.244.1.0/24", "fd00:10:244:1::/64"], ["10.5.0.3", "fd00::3"]),
        node("worker-2", ["10.244.2.0/24"], ["10.5.0.4"]),
        node("fresh", [], ["10.5.0.9"]),  # no pod range yet
        node("v6only", ["fd00:10:244:5::/64"], ["10.5.0.5"]),  # no address of that family
    ]
    wanted = routes.desired(nodes, "worker-1")
    assert wanted == {
        "10.244.0.0/24": routes.PodRoute("10.244.0.0/24", "10.5.0.2", "cp-1"),
        "10.244.2.0/24": routes.PodRoute("10.244.2.0/24", "10.5.0.4", "worker-2"),
    }
    assert sorted(routes.desired(nodes, "cp-1")) == ["10.244.1.0/24", "10.244.2.0/24", "fd00:10:244:1::/64"]
    current = {"10.244.0.0/24": "10.5.0.2", "10.244.2.0/24": "10.5.0.99", "10.244.7.0/24": "10.5.0.7"}
    replace, remove = routes.diff(current, wanted)
    assert replace == [wanted["10.244.2.0/24"]]  # moved to a new address
    assert remove == ["10.244.7.0/24"]  # its node is gone
    assert routes.diff({k: v.gateway for k, v in wanted.items()}, wanted) == ([], [])


def test_pod_to_pod_is_exempt_from_masquerading() -> None:
    rules = routes.masquerade_exemptions(["10.244.0.0/16", "fd00:10:244::/56"])
    assert rules[0] == (
        4,
        [
            "-s",
            "10.244.0.0/16",
            "-d",
            "10.244.0.0/16",
            "-m",
            "comment",
            "--comment",
            routes.COMMENT,
            "-j",
            "RETURN",
        ],
    )
    assert rules[1][0] == 6
    calls: list[list[str]] = []
    codes = iter([1, 0, 0])
    assert routes.ensure_exemption(4, rules[0][1], lambda argv: calls.append(argv) or next(codes))
    assert calls[0][1:6] == ["-w", "-t", "nat", "-C", "POSTROUTING"]
    assert calls[1][1:7] == ["-w", "-t", "nat", "-I", "POSTROUTING", "1"]
    assert not routes.ensure_exemption(4, rules[0][1], lambda argv: calls.append(argv) or next(codes))


def test_nodes_are_granted_the_node_list() -> None:
    (role_path, role), (binding_path, binding) = routes.rbac_objects()
    assert role_path.endswith("/clusterroles") and binding_path.endswith("/clusterrolebindings")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == routes.NODE_READER


NETLINK_SCRIPT = """
import json, sys
from pyroute2 import IPRoute
from talos_os.kubernetes import routes
with IPRoute() as ipr:
    ipr.link("add", ifname="eth0", kind="veth", peer="peer0")  # no dummy module everywhere
    ipr.link("set", index=ipr.link_lookup(ifname="peer0")[0], state="up")
    idx = ipr.link_lookup(ifname="eth0")[0]
    ipr.addr("add", index=idx, address="10.9.0.1", prefixlen=24)
    ipr.link("set", index=idx, state="up")
    ipr.route("add", dst="10.200.0.0/24", gateway="10.9.0.7")  # not ours: never touched
nl = routes.Netlink()
seen = []
nodes = [
    {"metadata": {"name": "a"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
     "status": {"addresses": [{"type": "InternalIP", "address": "10.9.0.2"}]}},
    {"metadata": {"name": "b"}, "spec": {"podCIDRs": ["10.244.2.0/24"]},
     "status": {"addresses": [{"type": "InternalIP", "address": "10.9.0.3"}]}},
]
seen.append([r.cidr for r in routes.sync_once("me", nodes, nl)[0]])
seen.append(nl.current())
nodes[1]["status"]["addresses"][0]["address"] = "10.9.0.4"  # b moved
seen.append([r.gateway for r in routes.sync_once("me", nodes[1:], nl)[0]])  # and a is gone
seen.append(nl.current())
with IPRoute() as ipr:
    seen.append(sorted(str(r.get_attr("RTA_DST")) for r in ipr.get_routes(family=2) if r.get_attr("RTA_DST")))
print(json.dumps(seen))
"""


def test_routes_for_real_in_a_network_namespace_of_our_own() -> None:
    """pyroute2 against a real kernel, in a throwaway namespace (unshare -n): only our routes change."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace")
    import sys

    out = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", NETLINK_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    added, first, moved, second, table = json.loads(out)
    assert added == ["10.244.1.0/24", "10.244.2.0/24"]
    assert first == {"10.244.1.0/24": "10.9.0.2", "10.244.2.0/24": "10.9.0.3"}
    assert moved == ["10.9.0.4"] and second == {"10.244.2.0/24": "10.9.0.4"}
    assert "10.200.0.0" in table and "10.244.1.0" not in table
