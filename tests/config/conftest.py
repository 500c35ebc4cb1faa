"""Fixtures for the machine config tests: a real PKI (made once per session) and valid configs."""

import base64
import copy
import datetime
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from talos_os.config import ConfigError, ConfigIssue, Mode, loads

DELETE = object()  # edit value meaning "remove this key"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def make_cert(
    subject: str,
    key: Any,
    *,
    issuer: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None = None,
    ca: bool = True,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signing_key, algorithm)
    )


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as base64-of-PEM strings like the config holds them."""

    crt: str
    key: str
    cert: x509.Certificate
    private_key: Any

    def as_dict(self) -> dict[str, str]:
        return {"crt": self.crt, "key": self.key}


def pair(cert: x509.Certificate, key: Any) -> Pair:
    return Pair(b64(cert.public_bytes(serialization.Encoding.PEM)), b64(key_pem(key)), cert, key)


@dataclass(frozen=True)
class PKI:
    os_ca: Pair
    identity: Pair
    k8s_ca: Pair
    front_proxy_ca: Pair
    etcd_ca: Pair
    other_ca: Pair  # same subject as os_ca, different key: signs nothing we trust
    service_account_key: str
    encrypted_key: str
    aescbc: str


@pytest.fixture(scope="session")
def pki() -> PKI:
    os_key = ec.generate_private_key(ec.SECP256R1())
    os_ca = make_cert("talos os ca", os_key)
    identity_key = ec.generate_private_key(ec.SECP256R1())
    identity = make_cert("node-1", identity_key, issuer=(os_ca, os_key), ca=False)
    k8s_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    proxy_key = ec.generate_private_key(ec.SECP256R1())
    etcd_key = ed25519.Ed25519PrivateKey.generate()
    other_key = ec.generate_private_key(ec.SECP256R1())
    sa_key = ec.generate_private_key(ec.SECP256R1())
    encrypted = sa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    return PKI(
        os_ca=pair(os_ca, os_key),
        identity=pair(identity, identity_key),
        k8s_ca=pair(make_cert("kubernetes", k8s_key), k8s_key),
        front_proxy_ca=pair(make_cert("front-proxy-ca", proxy_key), proxy_key),
        etcd_ca=pair(make_cert("etcd-ca", etcd_key), etcd_key),
        other_ca=pair(make_cert("talos os ca", other_key), other_key),
        service_account_key=b64(key_pem(sa_key)),
        encrypted_key=b64(encrypted),
        aescbc=b64(bytes(range(32))),
    )


@pytest.fixture(scope="session")
def controlplane_template(pki: PKI) -> dict[str, Any]:
    return {
        "version": "v1",
        "debug": False,
        "machine": {
            "type": "controlplane",
            "token": "abcdef.0123456789abcdef",
            "ca": pki.os_ca.as_dict(),
            "identity": pki.identity.as_dict(),
            "certSANs": ["10.5.0.2", "node1.example"],
            "trustd": {"endpoints": ["https://10.5.0.2:50001"]},
            "network": {
                "hostname": "node-1",
                "dhcpTimeout": "30s",
                "interfaces": [
                    {
                        "name": "eth0",
                        "cidr": "10.5.0.3/24",
                        "mtu": 1500,
                        "routes": [{"network": "0.0.0.0/0", "gateway": "10.5.0.1", "metric": 100}],
                    },
                    {"name": "eth1", "dhcp": True},
                ],
                "nameservers": ["1.1.1.1", "2606:4700:4700::1111"],
            },
            "install": {"disk": "/dev/sda", "wipe": False, "extraKernelArgs": ["console=ttyS1"]},
            "files": [
                {
                    "path": "/var/etc/foo.conf",
                    "content": "hello\nworld\n",
                    "permissions": 0o644,
                    "op": "create",
                }
            ],
            "env": {"HTTP_PROXY": "http://proxy.local:3128"},
            "sysctls": {"net.ipv4.ip_forward": "1"},
        },
        "cluster": {
            "name": "demo",
            "controlPlane": {"endpoint": "https://10.5.0.2:6443"},
            "network": {
                "dnsDomain": "cluster.local",
                "podSubnets": ["10.244.0.0/16"],
                "serviceSubnets": ["10.96.0.0/12"],
            },
            "token": "ghijkl.0123456789abcdef",
            "aescbcEncryptionSecret": pki.aescbc,
            "ca": pki.k8s_ca.as_dict(),
            "serviceAccount": {"key": pki.service_account_key},
            "frontProxyCA": pki.front_proxy_ca.as_dict(),
            "etcdCA": pki.etcd_ca.as_dict(),
            "kubernetes": {
                "version": "v1.36.3",
                "images": {"kubelet": "ghcr.io/siderolabs/kubelet:v1.36.3"},
                "registryMirrors": {"docker.io": ["https://mirror.local:5000"]},
                "certSANs": ["k8s.example.com"],
                "extraArgs": {"kubelet": {"node-ip": "10.5.0.3"}, "apiServer": {"feature-gates": "Foo=true"}},
            },
        },
    }


@pytest.fixture
def controlplane(controlplane_template: dict[str, Any]) -> dict[str, Any]:
    """A valid controlplane config as plain data (camelCase keys), safe to modify."""
    return copy.deepcopy(controlplane_template)


@pytest.fixture
def worker(controlplane_template: dict[str, Any]) -> dict[str, Any]:
    """A valid worker config: the controlplane one without any private key of the cluster CAs."""
    data = copy.deepcopy(controlplane_template)
    data["machine"]["type"] = "worker"
    del data["machine"]["ca"]["key"]
    cluster = data["cluster"]
    del cluster["ca"]["key"]
    for name in ("aescbcEncryptionSecret", "serviceAccount", "frontProxyCA", "etcdCA"):
        del cluster[name]
    return data


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]|\[\"([^\"]*)\"\]")


def parse_path(path: str) -> list[str | int]:
    """Split ``machine.network.interfaces[0].cidr`` (or ``env["A.B"]``) into its steps."""
    steps: list[str | int] = []
    for name, index, quoted in _STEP.findall(path):
        steps.append(int(index) if index else quoted or name)
    return steps


def edit(data: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """Set (or with DELETE remove) values at paths; creates missing mappings, appends at a list's end."""
    for path, value in edits.items():
        *parents, last = parse_path(path)
        node: Any = data
        for step in parents:
            node = node.setdefault(step, {}) if isinstance(node, dict) else node[step]
        if value is DELETE:
            del node[last]
        elif isinstance(node, list) and last == len(node):
            node.append(value)
        else:
            node[last] = value
    return data


def issues_of(data: dict[str, Any] | str, mode: Mode | None = None) -> list[ConfigIssue]:
    """The issues loads() reports for ``data`` (dumped to YAML first when it is a dict)."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(ConfigError) as info:
        loads(text, mode=mode)
    return info.value.issues


@pytest.fixture
def helpers() -> "Helpers":
    return Helpers()


class Helpers:
    """The helper functions above, reachable from test modules through the ``helpers`` fixture."""

    DELETE = DELETE
    edit = staticmethod(edit)
    issues_of = staticmethod(issues_of)
    parse_path = staticmethod(parse_path)
    b64 = staticmethod(b64)
    key_pem = staticmethod(key_pem)
    make_cert = staticmethod(make_cert)
