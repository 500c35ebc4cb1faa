"""The typed model of valid configs: attribute types, defaults, accessors, dump and load."""

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from talos_os.config import (
    CertAndKey,
    ConfigError,
    FileOp,
    MachineConfig,
    MachineType,
    Mode,
    dump,
    load,
    loads,
)


def _load(data: dict[str, Any], mode: Mode | None = None) -> MachineConfig:
    return loads(yaml.safe_dump(data, sort_keys=False), mode=mode)


def _snake(data: Any) -> Any:
    """The same config with snake_case keys, as Python callers may write it."""
    renames = {
        "certSANs": "cert_sans",
        "dhcpTimeout": "dhcp_timeout",
        "extraKernelArgs": "extra_kernel_args",
        "controlPlane": "control_plane",
        "dnsDomain": "dns_domain",
        "podSubnets": "pod_subnets",
        "serviceSubnets": "service_subnets",
        "aescbcEncryptionSecret": "aescbc_encryption_secret",
        "serviceAccount": "service_account",
        "frontProxyCA": "front_proxy_ca",
        "etcdCA": "etcd_ca",
        "registryMirrors": "registry_mirrors",
        "extraArgs": "extra_args",
        "apiServer": "api_server",
    }
    if isinstance(data, dict):
        return {renames.get(k, k): (v if k in ("env", "sysctls") else _snake(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_snake(v) for v in data]
    return data


def test_controlplane_model(controlplane: dict[str, Any]) -> None:
    config = _load(controlplane)
    machine, cluster = config.machine, config.cluster
    assert machine.type is MachineType.CONTROLPLANE
    assert config.is_control_plane
    assert machine.network is not None
    eth0 = machine.network.interfaces[0]
    assert eth0.cidr == ipaddress.ip_interface("10.5.0.3/24")
    assert eth0.routes[0].network == ipaddress.ip_network("0.0.0.0/0")
    assert eth0.routes[0].gateway == ipaddress.ip_address("10.5.0.1")
    assert machine.network.dhcp_timeout == datetime.timedelta(seconds=30)
    assert machine.network.nameservers[1] == ipaddress.ip_address("2606:4700:4700::1111")
    assert machine.files[0].permissions == 0o644
    assert machine.files[0].op is FileOp.CREATE
    assert machine.sysctls == {"net.ipv4.ip_forward": "1"}
    assert cluster.network.pod_subnets == [ipaddress.ip_network("10.244.0.0/16")]
    assert cluster.control_plane.endpoint == "https://10.5.0.2:6443"
    assert cluster.front_proxy_ca is not None and cluster.etcd_ca is not None
    assert cluster.kubernetes.registry_mirrors == {"docker.io": ["https://mirror.local:5000"]}
    assert cluster.kubernetes.extra_args.api_server == {"feature-gates": "Foo=true"}


def test_worker_model(worker: dict[str, Any]) -> None:
    config = _load(worker)
    assert config.machine.type is MachineType.WORKER
    assert not config.is_control_plane
    assert config.machine.ca.key is None and config.machine.ca.private_key() is None
    assert config.cluster.service_account is None


def test_minimal_config_defaults(worker: dict[str, Any]) -> None:
    minimal = {
        "version": "v1",
        "machine": {k: worker["machine"][k] for k in ("type", "token", "ca")},
        "cluster": {k: worker["cluster"][k] for k in ("name", "controlPlane", "token", "ca")},
    }
    config = _load(minimal)
    assert config.debug is False
    assert config.machine.network is None and config.machine.files == [] and config.machine.env == {}
    assert config.cluster.network.dns_domain == "cluster.local"
    assert [str(n) for n in config.cluster.network.service_subnets] == ["10.96.0.0/12"]
    assert config.cluster.kubernetes.version == "v1.36.3"
    assert loads(dump(config)) == config
    assert yaml.safe_load(dump(config)) == minimal  # only what was given, no defaults


def test_effective_images(controlplane: dict[str, Any]) -> None:
    controlplane["cluster"]["kubernetes"]["images"] = {"etcd": "registry.local:5000/etcd:3.5.15-0"}
    images = _load(controlplane).cluster.kubernetes.effective_images
    assert images.api_server == "registry.k8s.io/kube-apiserver:v1.36.3"
    assert images.controller_manager == "registry.k8s.io/kube-controller-manager:v1.36.3"
    assert images.scheduler == "registry.k8s.io/kube-scheduler:v1.36.3"
    assert images.proxy == "registry.k8s.io/kube-proxy:v1.36.3"
    assert images.etcd == "registry.local:5000/etcd:3.5.15-0"
    assert images.coredns == "registry.k8s.io/coredns/coredns:v1.14.2"
    assert images.pause == "registry.k8s.io/pause:3.10.2"


def test_a_version_other_than_the_baked_one_is_refused(controlplane: dict[str, Any]) -> None:
    controlplane["cluster"]["kubernetes"]["version"] = "v1.31.1"
    with pytest.raises(ConfigError) as caught:
        _load(controlplane)
    assert str(caught.value).splitlines()[1:] == [
        "  cluster.kubernetes.version (line 76, column 14): expected v1.36.3 "
        "(the Kubernetes this talos-os release carries), got v1.31.1"
    ]


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        (
            "podSubnets",
            ["10.244.0.0/25"],
            "expected a range of /24 or larger (each node takes a /24 of it), got 10.244.0.0/25",
        ),
        (
            "serviceSubnets",
            ["10.0.0.0/8"],
            "expected a range of /12 or smaller (the API server refuses larger ones), got 10.0.0.0/8",
        ),
        ("serviceSubnets", ["10.244.0.0/20"], "which overlaps podSubnets[0] 10.244.0.0/16"),
    ],
)
def test_unusable_cluster_ranges_are_refused(
    controlplane: dict[str, Any], section: str, value: list[str], message: str
) -> None:
    controlplane["cluster"]["network"] = {
        "podSubnets": ["10.244.0.0/16"],
        "serviceSubnets": ["10.96.0.0/12"],
        section: value,
    }
    with pytest.raises(ConfigError) as caught:
        _load(controlplane)
    text = str(caught.value)
    assert f"cluster.network.{section}[0]" in text and message in text, text


def test_certificate_accessors(controlplane: dict[str, Any], pki: Any) -> None:
    config = _load(controlplane)
    ca = config.machine.ca
    assert ca.certificate() == pki.os_ca.cert
    assert ca.crt_pem == pki.os_ca.cert.public_bytes(serialization.Encoding.PEM)
    key = ca.private_key()
    assert key is not None
    assert key.public_key() == pki.os_ca.private_key.public_key()
    assert config.machine.identity is not None
    assert config.machine.identity.certificate() == pki.identity.cert


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("1.5s", 1.5),
        ("2us", 2e-6),
        ("1500ns", 1.5e-6),
    ],
)
def test_durations(controlplane: dict[str, Any], text: str, seconds: float) -> None:
    controlplane["machine"]["network"]["dhcpTimeout"] = text
    config = _load(controlplane)
    assert config.machine.network is not None and config.machine.network.dhcp_timeout is not None
    assert config.machine.network.dhcp_timeout.total_seconds() == pytest.approx(seconds, abs=1e-6)
    assert loads(dump(config)) == config


@pytest.mark.parametrize(("value", "mode"), [("0o600", 0o600), ("0600", 0o600), (0o755, 0o755), (0, 0)])
def test_permission_spellings(controlplane: dict[str, Any], value: Any, mode: int) -> None:
    controlplane["machine"]["files"][0]["permissions"] = value
    assert _load(controlplane).machine.files[0].permissions == mode


def test_yaml_octal_permissions(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False).replace("permissions: 420", "permissions: 0640")
    assert loads(text).machine.files[0].permissions == 0o640


def test_scalar_values_become_strings(controlplane: dict[str, Any]) -> None:
    controlplane["machine"]["sysctls"] = {"net.ipv4.ip_forward": 1, "vm.overcommit_memory": True}
    controlplane["machine"]["env"] = {"RETRIES": 3}
    controlplane["cluster"]["kubernetes"]["extraArgs"]["kubelet"] = {"v": 2}
    config = _load(controlplane)
    assert config.machine.sysctls == {"net.ipv4.ip_forward": "1", "vm.overcommit_memory": "true"}
    assert config.machine.env == {"RETRIES": "3"}
    assert config.cluster.kubernetes.extra_args.kubelet == {"v": "2"}


def test_ipv6_and_odd_but_valid_values(controlplane: dict[str, Any]) -> None:
    network = controlplane["machine"]["network"]
    network["interfaces"][0]["cidr"] = "fd00::3/64"
    network["interfaces"][0]["routes"] = [
        {"network": "::/0", "gateway": "fd00::1"},
        {"network": "10.9.0.0/16"},
    ]
    controlplane["machine"]["certSANs"] = ["fd00::2", "*.nodes.example"]
    controlplane["machine"]["sysctls"] = {"net/ipv4/conf/eth0.100/forwarding": "1"}
    controlplane["cluster"]["controlPlane"]["endpoint"] = "https://[fd00::2]:6443"
    controlplane["machine"]["trustd"]["endpoints"] = ["https://api.example.com:50001/"]
    controlplane["cluster"]["kubernetes"]["images"] = {
        "apiServer": "localhost:5000/kube/apiserver:v1.36.3",
        "etcd": "registry.k8s.io/etcd@sha256:" + "a" * 64,
        "pause": "pause:3.9",
        "coredns": "[::1]:5000/coredns:1.0",
    }
    controlplane["cluster"]["kubernetes"]["registryMirrors"] = {"*": ["http://mirror:5000/v2"]}
    config = _load(controlplane)
    assert config.machine.network is not None
    assert config.machine.network.interfaces[0].cidr == ipaddress.ip_interface("fd00::3/64")
    assert loads(dump(config)) == config


# --- building from Python ----------------------------------------------------------------------


def test_snake_case_names_are_accepted(controlplane: dict[str, Any]) -> None:
    assert MachineConfig.model_validate(_snake(controlplane)) == _load(controlplane)


def test_python_construction_checks_everything(worker: dict[str, Any], pki: Any) -> None:
    worker["machine"]["ca"]["key"] = pki.os_ca.key
    worker["cluster"]["name"] = "Bad"
    with pytest.raises(ValidationError) as info:
        MachineConfig.model_validate(worker)
    locs = {tuple(e["loc"]): e["msg"] for e in info.value.errors()}
    assert set(locs) == {("machine", "ca", "key"), ("cluster", "name")}
    assert locs[("cluster", "name")].endswith("got 'Bad'")


def test_python_construction_with_models(worker: dict[str, Any], pki: Any) -> None:
    config = _load(worker)
    rebuilt = MachineConfig(
        version="v1",
        machine=config.machine.model_copy(update={"ca": CertAndKey(crt=pki.os_ca.crt)}),
        cluster=config.cluster,
    )
    assert rebuilt == config
    with pytest.raises(ValidationError, match="expected no OS CA private key on a worker node"):
        MachineConfig(
            version="v1",
            machine=config.machine.model_copy(
                update={"ca": CertAndKey(crt=pki.os_ca.crt, key=pki.os_ca.key)}
            ),
            cluster=config.cluster,
        )


def test_mode_through_validation_context(controlplane: dict[str, Any]) -> None:
    del controlplane["machine"]["install"]
    MachineConfig.model_validate(controlplane)
    with pytest.raises(ValidationError, match="metal mode requires"):
        MachineConfig.model_validate(controlplane, context={"mode": Mode.METAL})


def test_models_are_immutable(controlplane: dict[str, Any]) -> None:
    config = _load(controlplane)
    with pytest.raises(ValidationError):
        config.debug = True  # type: ignore[misc]


def test_machine_type_roles() -> None:
    assert MachineType.INIT.is_control_plane and MachineType.CONTROLPLANE.is_control_plane
    assert not MachineType.WORKER.is_control_plane
    assert [m.value for m in Mode] == ["cloud", "metal"]


# --- dump --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["controlplane", "worker"])
def test_dump_round_trip(request: pytest.FixtureRequest, role: str) -> None:
    data = request.getfixturevalue(role)
    config = _load(data)
    text = dump(config)
    assert loads(text) == config
    assert dump(loads(text)) == text


def test_dump_uses_camel_case_and_omits_unset(controlplane: dict[str, Any]) -> None:
    del controlplane["machine"]["identity"]
    del controlplane["cluster"]["kubernetes"]
    text = dump(_load(controlplane))
    data = yaml.safe_load(text)
    assert "certSANs" in data["machine"] and "dhcpTimeout" in data["machine"]["network"]
    assert {"controlPlane", "aescbcEncryptionSecret", "frontProxyCA", "etcdCA", "serviceAccount"} <= set(
        data["cluster"]
    )
    assert "identity" not in data["machine"]
    assert "kubernetes" not in data["cluster"]
    assert "dhcp" not in data["machine"]["network"]["interfaces"][0]
    assert "_" not in "".join(_all_keys(data, skip=("env", "sysctls", "extraArgs")))


def _all_keys(data: Any, skip: tuple[str, ...]) -> list[str]:
    if isinstance(data, dict):
        return [k for k, v in data.items() for k in [k, *(_all_keys(v, skip) if k not in skip else [])]]
    if isinstance(data, list):
        return [k for item in data for k in _all_keys(item, skip)]
    return []


def test_dump_formats(controlplane: dict[str, Any]) -> None:
    controlplane["machine"]["network"]["dhcpTimeout"] = "90m"
    text = dump(_load(controlplane))
    assert "permissions: 0o644\n" in text
    assert "dhcpTimeout: 1h30m\n" in text
    assert "content: |\n      hello\n      world\n" in text
    assert "cidr: 10.5.0.3/24\n" in text


def test_dump_of_python_built_config(worker: dict[str, Any]) -> None:
    config = MachineConfig.model_validate(_snake(worker))
    assert loads(dump(config)) == config


# --- files -------------------------------------------------------------------------------------


def test_load_file(tmp_path: Path, controlplane: dict[str, Any]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(controlplane))
    assert load(path) == _load(controlplane)
    assert load(os.fspath(path), mode=Mode.METAL) == _load(controlplane)


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert str(info.value) == f"cannot read config file {missing}: No such file or directory"
    assert info.value.source == str(missing)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*: Is a directory"):
        load(tmp_path)


def test_load_invalid_file_names_it(tmp_path: Path, controlplane: dict[str, Any]) -> None:
    controlplane["machine"]["token"] = "x"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(controlplane))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"config {path} is invalid (1 error):\n  machine.token (line ")
