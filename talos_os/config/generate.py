"""Generate a cluster's machine configs and the matching talosconfig from one set of secrets.

``init.yaml`` bootstraps the first control plane, ``controlplane.yaml`` joins more of them and
``worker.yaml`` joins workers. All three share the same CAs and tokens; workers only get the CA
certificates (never the keys), no service-account key and no encryption secret, so a stolen worker
config cannot mint credentials. The talosconfig carries an ``os:admin`` client certificate.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets as _random
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from talos_os import pki
from talos_os.kubernetes import versions
from talos_os.talosconfig import Context, TalosConfig

DEFAULT_KUBERNETES_VERSION = versions.KUBERNETES
DEFAULT_INSTALL_DISK = "/dev/sda"
DEFAULT_DNS_DOMAIN = "cluster.local"
DEFAULT_POD_SUBNETS = ("10.244.0.0/16",)
DEFAULT_SERVICE_SUBNETS = ("10.96.0.0/12",)
TRUSTD_PORT = 50001
ADMIN_NAME = "admin"

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$")
_CLUSTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_K8S_VERSION = re.compile(r"^v\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")

FILE_NAMES = ("init.yaml", "controlplane.yaml", "worker.yaml", "talosconfig")


class GenerateError(ValueError):
    """An input to ``generate`` is unusable; the message names it and says what is expected."""


@dataclass(frozen=True)
class Secrets:
    """Everything a cluster shares; generated once, then rendered into every machine config."""

    os_ca: pki.CertKey
    kubernetes_ca: pki.CertKey
    front_proxy_ca: pki.CertKey
    etcd_ca: pki.CertKey
    service_account_key: bytes
    trustd_token: str
    kubeadm_token: str
    aescbc_secret: bytes


@dataclass(frozen=True)
class GeneratedConfigs:
    """The three machine configs and the talosconfig, as YAML texts, plus the secrets behind them."""

    init: str
    controlplane: str
    worker: str
    talosconfig: str
    secrets: Secrets

    def files(self) -> dict[str, str]:
        """File name to content, in the order ``osctl config generate`` writes them."""
        return dict(
            zip(FILE_NAMES, (self.init, self.controlplane, self.worker, self.talosconfig), strict=True)
        )


def new_token() -> str:
    """A bootstrap-style token ``[a-z0-9]{6}.[a-z0-9]{16}`` from a CSPRNG."""
    pick = "".join(_random.choice(_TOKEN_ALPHABET) for _ in range(22))
    return f"{pick[:6]}.{pick[6:]}"


def new_secrets(cluster_name: str) -> Secrets:
    """Fresh CAs, keys and tokens for one cluster."""
    return Secrets(
        os_ca=pki.new_os_ca(cluster_name),
        kubernetes_ca=pki.new_kubernetes_ca("kubernetes"),
        front_proxy_ca=pki.new_kubernetes_ca("front-proxy-ca"),
        etcd_ca=pki.new_kubernetes_ca("etcd-ca"),
        service_account_key=pki.new_service_account_key(),
        trustd_token=new_token(),
        kubeadm_token=new_token(),
        aescbc_secret=os.urandom(32),
    )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_hostname(value: str, *, wildcard: bool = False) -> bool:
    labels = value.rstrip(".").split(".")
    if wildcard and len(labels) > 1 and labels[0] == "*":
        labels = labels[1:]
    return 0 < len(value) <= 253 and all(_LABEL.match(label) for label in labels)


def validate_cluster_name(name: str) -> str:
    """Cluster names become a DNS label (and a talosconfig context), so hold them to that."""
    if not _CLUSTER_NAME.match(name):
        raise GenerateError(
            f"cluster name {name!r} is invalid: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Check the control-plane endpoint is ``https://HOST:PORT`` and return (host, port)."""
    hint = "expected an https URL with a port, like https://10.5.0.2:6443"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise GenerateError(f"endpoint {endpoint!r} is invalid ({exc}); {hint}") from None
    if parts.scheme != "https":
        raise GenerateError(f"endpoint {endpoint!r} must use https; {hint}")
    host = parts.hostname or ""
    if not host or not (_is_ip(host) or _is_hostname(host)):
        raise GenerateError(f"endpoint {endpoint!r} has no valid host name or IP address; {hint}")
    if port is None or port == 0:
        raise GenerateError(f"endpoint {endpoint!r} has no port; {hint}")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise GenerateError(f"endpoint {endpoint!r} must be just scheme, host and port; {hint}")
    return host, port


def validate_sans(sans: Iterable[str]) -> list[str]:
    """Each extra SAN must be an IP address or a DNS name (``*.`` wildcards allowed); drop duplicates."""
    result: list[str] = []
    for raw in sans:
        san = raw.strip()
        if not (_is_ip(san) or _is_hostname(san, wildcard=True)):
            raise GenerateError(f"additional SAN {raw!r} is neither an IP address nor a DNS name")
        if san not in result:
            result.append(san)
    return result


def _url_host(host: str) -> str:
    """A host as it appears inside a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def _ca(pair: pki.CertKey, *, with_key: bool) -> dict[str, str]:
    return {"crt": pair.b64_crt(), "key": pair.b64_key()} if with_key else {"crt": pair.b64_crt()}


def _machine_doc(
    machine_type: str, secrets: Secrets, *, sans: list[str], trustd: str, install_disk: str
) -> dict[str, Any]:
    control_plane = machine_type != "worker"
    return {
        "type": machine_type,
        "token": secrets.trustd_token,
        "ca": _ca(secrets.os_ca, with_key=control_plane),
        "certSANs": list(sans) if control_plane else [],
        "trustd": {"endpoints": [trustd]},
        "network": {},
        "install": {"disk": install_disk, "wipe": False, "extraKernelArgs": []},
    }


def _cluster_doc(
    machine_type: str, secrets: Secrets, *, name: str, endpoint: str, sans: list[str], version: str
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "controlPlane": {"endpoint": endpoint},
        "network": {
            "dnsDomain": DEFAULT_DNS_DOMAIN,
            "podSubnets": list(DEFAULT_POD_SUBNETS),
            "serviceSubnets": list(DEFAULT_SERVICE_SUBNETS),
        },
        "token": secrets.kubeadm_token,
    }
    if machine_type == "worker":
        doc["ca"] = _ca(secrets.kubernetes_ca, with_key=False)
    else:
        doc["aescbcEncryptionSecret"] = pki.b64encode(secrets.aescbc_secret)
        doc["ca"] = _ca(secrets.kubernetes_ca, with_key=True)
        doc["serviceAccount"] = {"key": pki.b64encode(secrets.service_account_key)}
        doc["frontProxyCA"] = _ca(secrets.front_proxy_ca, with_key=True)
        doc["etcdCA"] = _ca(secrets.etcd_ca, with_key=True)
    doc["kubernetes"] = {"version": version, "certSANs": list(sans)}
    return doc


def _render(machine: dict[str, Any], cluster: dict[str, Any]) -> str:
    header = f"# talos-os machine config ({machine['type']}). It holds cluster secrets: keep it private.\n"
    body = {"version": "v1", "debug": False, "machine": machine, "cluster": cluster}
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=1 << 20)


def _talosconfig(name: str, host: str, os_ca: pki.CertKey) -> str:
    admin = pki.issue_client_certificate(os_ca, ADMIN_NAME, pki.ROLE_ADMIN)
    ctx = Context(endpoints=[host], nodes=[], ca=os_ca.b64_crt(), crt=admin.b64_crt(), key=admin.b64_key())
    return TalosConfig(context=name, contexts={name: ctx}).to_yaml()


def generate(
    cluster_name: str,
    endpoint: str,
    *,
    additional_sans: Iterable[str] = (),
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
    install_disk: str = DEFAULT_INSTALL_DISK,
    secrets: Secrets | None = None,
) -> GeneratedConfigs:
    """Render init/controlplane/worker configs and a talosconfig; ``secrets`` defaults to fresh ones."""
    validate_cluster_name(cluster_name)
    host, port = parse_endpoint(endpoint)
    endpoint = f"https://{_url_host(host)}:{port}"  # canonical form: no trailing slash
    extra = validate_sans(additional_sans)
    if not _K8S_VERSION.match(kubernetes_version):
        raise GenerateError(
            f"Kubernetes version {kubernetes_version!r} is invalid: expected vMAJOR.MINOR.PATCH"
        )
    if not install_disk.startswith("/dev/"):
        raise GenerateError(f"install disk {install_disk!r} must be a device path under /dev")
    secrets = secrets if secrets is not None else new_secrets(cluster_name)
    sans = [host, *(s for s in extra if s != host)]
    trustd = f"https://{_url_host(host)}:{TRUSTD_PORT}"
    rendered = {}
    for machine_type in ("init", "controlplane", "worker"):
        machine = _machine_doc(machine_type, secrets, sans=sans, trustd=trustd, install_disk=install_disk)
        cluster = _cluster_doc(
            machine_type, secrets, name=cluster_name, endpoint=endpoint, sans=sans, version=kubernetes_version
        )
        rendered[machine_type] = _render(machine, cluster)
    return GeneratedConfigs(
        init=rendered["init"],
        controlplane=rendered["controlplane"],
        worker=rendered["worker"],
        talosconfig=_talosconfig(cluster_name, host, secrets.os_ca),
        secrets=secrets,
    )
