"""kubeadm's input rendered from a machine config: its documents, the CIS flags, the files it reads."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from bakery.image import BakeResult
from talos_os import pki
from talos_os.config import MachineConfig
from talos_os.kubernetes import kubeadm, node, versions
from talos_os.kubernetes.kubeadm import NodeFacts


def _docs(cfg: MachineConfig, facts: NodeFacts) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(kubeadm.kubeadm_config(cfg, facts))}


def _flags(component: dict[str, Any]) -> dict[str, str]:
    return {arg["name"]: arg["value"] for arg in component["extraArgs"]}


def test_documents_and_cluster_shape(init_config: MachineConfig, facts: NodeFacts) -> None:
    docs = _docs(init_config, facts)
    assert set(docs) == {
        "InitConfiguration",
        "ClusterConfiguration",
        "KubeletConfiguration",
        "KubeProxyConfiguration",
    }
    init, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    assert init["bootstrapTokens"][0]["token"] == init_config.cluster.token
    assert init["nodeRegistration"] | {"ignorePreflightErrors": None} == init["nodeRegistration"] | {
        "ignorePreflightErrors": None,
        "name": "node-1",
        "criSocket": "unix:///run/containerd/containerd.sock",
        "taints": [],
    }
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.0.2.15", "bindPort": 6443}
    assert cluster["kubernetesVersion"] == versions.KUBERNETES
    assert cluster["controlPlaneEndpoint"] == "10.0.2.15:6443"
    assert cluster["networking"] == {
        "dnsDomain": "cluster.local",
        "podSubnet": "10.244.0.0/16",
        "serviceSubnet": "10.96.0.0/12",
    }
    assert cluster["apiServer"]["certSANs"] == [
        "10.0.2.15",
        "node-1",
        "127.0.0.1",
        "localhost",
        "demo.example",
    ]
    assert all(
        int(v.rstrip("ms").split("m")[0]) >= 4 for v in init["timeouts"].values()
    )  # minutes, not seconds
    gogc = [{"name": "GOGC", "value": "200"}]  # less collector CPU for the control plane under emulation
    for component in (cluster["apiServer"], cluster["controllerManager"], cluster["scheduler"]):
        assert component["extraEnvs"] == gogc
    assert cluster["etcd"]["local"]["extraEnvs"] == gogc


def test_cis_flags(init_config: MachineConfig, facts: NodeFacts) -> None:
    cluster = _docs(init_config, facts)["ClusterConfiguration"]
    api = _flags(cluster["apiServer"])
    assert api["anonymous-auth"] == "false"
    assert api["authorization-mode"] == "Node,RBAC"
    assert api["profiling"] == "false"
    assert set(api["enable-admission-plugins"].split(",")) >= {"NodeRestriction", "PodSecurity"}
    assert api["audit-log-path"].startswith("/var/log/kubernetes/audit/")
    assert {"audit-log-maxage", "audit-log-maxbackup", "audit-log-maxsize", "audit-policy-file"} <= set(api)
    assert api["encryption-provider-config"] == "/etc/kubernetes/encryption/config.yaml"
    assert api["kubelet-certificate-authority"] == "/etc/kubernetes/pki/ca.crt"
    assert api["tls-min-version"] == "VersionTLS12"
    assert all(
        "CBC" not in s and "RSA_WITH" not in s.replace("ECDHE_RSA_WITH", "")
        for s in api["tls-cipher-suites"].split(",")
    )
    for component in ("controllerManager", "scheduler"):
        flags = _flags(cluster[component])
        assert flags["profiling"] == "false" and flags["bind-address"] == "127.0.0.1"
    assert _flags(cluster["controllerManager"])["use-service-account-credentials"] == "true"
    kubelet = _docs(init_config, facts)["KubeletConfiguration"]
    assert kubelet["authentication"]["anonymous"] == {"enabled": False}
    assert kubelet["authorization"] == {"mode": "Webhook"}
    assert kubelet["readOnlyPort"] == 0 and kubelet["protectKernelDefaults"] is True
    assert kubelet["rotateCertificates"] is True and kubelet["cgroupDriver"] == "cgroupfs"


def test_extra_args_override_defaults(init_config: MachineConfig, facts: NodeFacts) -> None:
    cfg = init_config.model_copy(deep=True)
    cfg.cluster.kubernetes.extra_args.api_server["audit-log-maxage"] = "7"
    cfg.cluster.kubernetes.extra_args.kubelet["v"] = "2"
    api = _flags(_docs(cfg, facts)["ClusterConfiguration"]["apiServer"])
    assert api["audit-log-maxage"] == "7"
    assert "--v=2" in kubeadm.kubelet_flags(cfg, facts)


def test_probe_patches_are_json_patches_with_slow_thresholds() -> None:
    patches = kubeadm.probe_patches()
    assert sorted(patches) == [
        "etcd+json.json",
        "kube-apiserver+json.json",
        "kube-controller-manager+json.json",
        "kube-scheduler+json.json",
    ]
    api = json.loads(patches["kube-apiserver+json.json"])
    startup = next(op["value"] for op in api if op["path"].endswith("startupProbe"))
    assert startup["tcpSocket"]["port"] == 6443  # 401 for anonymous HTTP probes would kill a healthy server
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 1200


def test_control_plane_files_match_the_config(
    init_config: MachineConfig, facts: NodeFacts, tmp_path: Path
) -> None:
    files = kubeadm.control_plane_files(init_config, facts)
    node.write_files(files, tmp_path)
    pki_dir = tmp_path / "etc/kubernetes/pki"
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
    assert ca == init_config.cluster.ca.certificate()
    for secret in ("ca.key", "sa.key", "front-proxy-ca.key", "etcd/ca.key"):
        assert stat.S_IMODE(os.stat(pki_dir / secret).st_mode) == 0o600, secret
    assert stat.S_IMODE(os.stat(tmp_path / "etc/kubernetes/encryption/config.yaml").st_mode) == 0o600
    serving = x509.load_pem_x509_certificate((tmp_path / "var/lib/kubelet/pki/kubelet.crt").read_bytes())
    pki.verify_issued_by(serving, ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node-1" in sans.get_values_for_type(x509.DNSName)
    encryption = yaml.safe_load((tmp_path / "etc/kubernetes/encryption/config.yaml").read_text())
    key = encryption["resources"][0]["providers"][0]["aescbc"]["keys"][0]["secret"]
    assert key == init_config.cluster.aescbc_encryption_secret
    policy = yaml.safe_load((tmp_path / "etc/kubernetes/audit/policy.yaml").read_text())
    assert policy["kind"] == "Policy" and policy["rules"][0]["level"] == "Metadata"


def test_a_worker_config_cannot_bootstrap(worker_config: MachineConfig, facts: NodeFacts) -> None:
    with pytest.raises(ValueError, match=r"cluster\.ca\.key"):
        kubeadm.control_plane_files(worker_config, facts)


@pytest.mark.e2e
def test_the_payloads_kubeadm_accepts_the_config(
    init_config: MachineConfig, facts: NodeFacts, baked_image: BakeResult, tmp_path: Path
) -> None:
    """kubeadm itself (the baked payload's) reads every document and finds nothing to refuse."""
    kubeadm_binary = tmp_path / "kubeadm"  # the multi-call binary the bake wrote as kubectl, called kubeadm
    kubeadm_binary.symlink_to(baked_image.raw.parent / "kubectl")
    path = tmp_path / "kubeadm.yaml"
    path.write_text(kubeadm.kubeadm_config(init_config, facts))
    result = subprocess.run(
        [str(kubeadm_binary), "config", "validate", "--config", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
