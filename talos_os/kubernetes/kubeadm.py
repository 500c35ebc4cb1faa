"""kubeadm's input, rendered from the machine config: its configuration, CA files, patches, and the
API server's audit policy and encryption configuration.

The CIS Kubernetes Benchmark flags live here (see the README's table): the control plane a node
bootstraps is hardened by construction, not by a later edit. Timeouts and probe thresholds are
raised far above kubeadm's defaults, because a slow but healthy control plane (software
emulation, small boards) must never be killed while it starts.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import yaml
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from talos_os import pki
from talos_os.config import MachineConfig
from talos_os.config.model import CertAndKey
from talos_os.kubernetes import versions

PKI_DIR = PurePosixPath("/etc/kubernetes/pki")
AUDIT_DIR = PurePosixPath("/etc/kubernetes/audit")
AUDIT_LOG_DIR = PurePosixPath("/var/log/kubernetes/audit")
ENCRYPTION_DIR = PurePosixPath("/etc/kubernetes/encryption")
PATCHES_DIR = PurePosixPath("/etc/kubernetes/patches")
CONFIG_PATH = PurePosixPath("/etc/kubernetes/kubeadm.yaml")
CRI_SOCKET = "unix:///run/containerd/containerd.sock"
KUBELET_SERVING = PurePosixPath("/var/lib/kubelet/pki")

# TLS 1.2 suites with forward secrecy and AEAD only (CIS 1.2.29, 4.2.13); TLS 1.3 suites are fixed by Go.
STRONG_CIPHERS = ",".join(
    [
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    ]
)

# Flag -> value for each control-plane component; the README maps each to its CIS item.
API_SERVER_FLAGS: dict[str, str] = {
    "anonymous-auth": "false",
    "authorization-mode": "Node,RBAC",
    "profiling": "false",
    "enable-admission-plugins": "NodeRestriction,PodSecurity",
    "audit-log-path": str(AUDIT_LOG_DIR / "audit.log"),
    "audit-log-maxage": "30",
    "audit-log-maxbackup": "10",
    "audit-log-maxsize": "100",
    "audit-policy-file": str(AUDIT_DIR / "policy.yaml"),
    "encryption-provider-config": str(ENCRYPTION_DIR / "config.yaml"),
    "service-account-lookup": "true",
    "kubelet-certificate-authority": str(PKI_DIR / "ca.crt"),
    "tls-min-version": "VersionTLS12",
    "tls-cipher-suites": STRONG_CIPHERS,
    # etcd on a slow node (software emulation, a busy host) answers a read in hundreds of milliseconds;
    # with the 2 s defaults the API server's own etcd checks time out now and then and /readyz flaps
    "etcd-healthcheck-timeout": "10s",
    "etcd-readycheck-timeout": "10s",
}
# A slow node answers a lease renewal in seconds, not milliseconds: with client-go's defaults (renew
# within 10 s) the controller manager and scheduler lose their leases and exit over and over.
LEADER_ELECTION_FLAGS: dict[str, str] = {
    "leader-elect-lease-duration": "60s",
    "leader-elect-renew-deadline": "40s",
    "leader-elect-retry-period": "10s",
}
CONTROLLER_MANAGER_FLAGS: dict[str, str] = {
    **LEADER_ELECTION_FLAGS,
    "profiling": "false",
    "bind-address": "127.0.0.1",
    "use-service-account-credentials": "true",
    "terminated-pod-gc-threshold": "1000",
    "tls-min-version": "VersionTLS12",
    "tls-cipher-suites": STRONG_CIPHERS,
}
SCHEDULER_FLAGS: dict[str, str] = {
    **LEADER_ELECTION_FLAGS,
    "profiling": "false",
    "bind-address": "127.0.0.1",
    "tls-min-version": "VersionTLS12",
    "tls-cipher-suites": STRONG_CIPHERS,
}
ETCD_FLAGS: dict[str, str] = {
    # kubeadm already sets client-cert-auth, peer-client-cert-auth and the TLS files (CIS 2.1-2.6).
    "cipher-suites": STRONG_CIPHERS,
    "heartbeat-interval": "500",  # a slow node must not lose its own leadership
    "election-timeout": "5000",
}
# The control plane's Go runtimes collect garbage at twice the default heap growth: under software
# emulation the API server and etcd spend a large share of their CPU in the collector while the
# control plane starts, and the node has the memory (a few hundred MB of heap each) to trade for it.
CONTROL_PLANE_ENV: list[dict[str, str]] = [{"name": "GOGC", "value": "200"}]

# kubeadm's own preflight checks that cannot pass on a node without systemd or a kernel config file,
# or that fetch images (they are already imported).
# losetup (block volumes) and cp (kubeadm upgrade) are not in the image: nothing the node runs needs them.
IGNORED_PREFLIGHT = [
    "SystemVerification",
    "Service-Kubelet",
    "ImagePull",
    "Swap",
    "FileExisting-losetup",
    "FileExisting-cp",
]


def ignore_all_preflight(text: str) -> str:
    """A kubeadm configuration (Init or Join) whose nodeRegistration ignores every preflight error:
    what a retry over a failed attempt's files needs. kubeadm refuses ``--ignore-preflight-errors=all``
    next to a config that lists single checks ("don't specify individual checks if 'all' is used"),
    so the retry changes the config instead of adding the flag."""
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") in ("InitConfiguration", "JoinConfiguration"):
            doc.setdefault("nodeRegistration", {})["ignorePreflightErrors"] = ["all"]
    return yaml.safe_dump_all(docs, sort_keys=False)


# Slow but healthy control planes must not be killed: minutes, not seconds.
TIMEOUTS = {
    "controlPlaneComponentHealthCheck": "30m0s",
    "kubeletHealthCheck": "10m0s",
    "kubernetesAPICall": "15m0s",
    "etcdAPICall": "10m0s",
    "tlsBootstrap": "10m0s",
    "discovery": "10m0s",
    "upgradeManifests": "10m0s",
}

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Secrets, config maps and tokens: who and when, never the content (CIS 3.2.2).
        {
            "level": "Metadata",
            "resources": [
                {"group": "", "resources": ["secrets", "configmaps", "serviceaccounts/token"]},
                {"group": "authentication.k8s.io", "resources": ["tokenreviews"]},
            ],
        },
        # High-volume read-only noise.
        {"level": "None", "users": ["system:kube-proxy"], "verbs": ["watch"]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/livez*", "/readyz*", "/version"]},
        {"level": "None", "resources": [{"group": "", "resources": ["events"]}]},
        {"level": "Request", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "Metadata"},
    ],
}


@dataclass(frozen=True)
class NodeFacts:
    """What the node knows about itself that the config does not say."""

    hostname: str
    address: str  # the address the API server advertises and the kubelet reports


@dataclass(frozen=True)
class File:
    """A file to write, with its mode (0600 for anything secret)."""

    path: PurePosixPath
    content: bytes
    mode: int = 0o644


def _args(flags: dict[str, str], extra: dict[str, str]) -> list[dict[str, str]]:
    """kubeadm v1beta4's list form; the config's extraArgs win over the defaults."""
    merged = {**flags, **{k: str(v) for k, v in extra.items()}}
    return [{"name": k, "value": v} for k, v in sorted(merged.items())]


def endpoint_host_port(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    return parts.hostname or "", parts.port or 443


def api_server_endpoint(cfg: MachineConfig) -> str:
    """``HOST:PORT`` of the control-plane endpoint, as kubeadm's discovery wants it."""
    host, port = endpoint_host_port(str(cfg.cluster.control_plane.endpoint))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cert_sans(cfg: MachineConfig, node: NodeFacts) -> list[str]:
    """Names the API server certificate carries: the endpoint, the node, loopback and the config's own."""
    host, _port = endpoint_host_port(str(cfg.cluster.control_plane.endpoint))
    names = [host, node.hostname, node.address, "127.0.0.1", "localhost", *cfg.cluster.kubernetes.cert_sans]
    return list(dict.fromkeys(n for n in names if n))


def kubeadm_config(cfg: MachineConfig, node: NodeFacts) -> str:
    """InitConfiguration, ClusterConfiguration, KubeletConfiguration and KubeProxyConfiguration."""
    k8s = cfg.cluster.kubernetes
    net = cfg.cluster.network
    extra = k8s.extra_args
    host, port = endpoint_host_port(str(cfg.cluster.control_plane.endpoint))
    init = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "InitConfiguration",
        "bootstrapTokens": [
            {
                "token": cfg.cluster.token,
                "ttl": "0s",  # the config's token joins nodes for the cluster's life, as Talos does
                "groups": ["system:bootstrappers:kubeadm:default-node-token"],
                "usages": ["signing", "authentication"],
            }
        ],
        "nodeRegistration": {
            "name": node.hostname,
            "criSocket": CRI_SOCKET,
            "taints": [],  # a one-node cluster runs its workloads on the control plane
            "ignorePreflightErrors": IGNORED_PREFLIGHT,
            "imagePullPolicy": "IfNotPresent",
            "kubeletExtraArgs": _args({"node-ip": node.address}, {}),
        },
        "localAPIEndpoint": {"advertiseAddress": node.address, "bindPort": 6443},
        "patches": {"directory": str(PATCHES_DIR)},
        "timeouts": TIMEOUTS,
    }
    cluster = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": cfg.cluster.name,
        "kubernetesVersion": k8s.version,
        "controlPlaneEndpoint": f"{_bracket(host)}:{port}",
        "certificatesDir": str(PKI_DIR),
        # ECDSA leaf keys: a TLS handshake signs with the server's key, and an RSA-2048 signature costs
        # ~50 times an ECDSA P-256 one, which a slow node's API server pays for every connection.
        "encryptionAlgorithm": "ECDSA-P256",
        "imageRepository": versions.REGISTRY,
        "networking": {
            "dnsDomain": net.dns_domain,
            "podSubnet": ",".join(str(s) for s in net.pod_subnets),
            "serviceSubnet": ",".join(str(s) for s in net.service_subnets),
        },
        "apiServer": {
            "certSANs": cert_sans(cfg, node),
            "extraArgs": _args(API_SERVER_FLAGS, extra.api_server),
            "extraEnvs": CONTROL_PLANE_ENV,
            "extraVolumes": [
                _volume("audit-policy", AUDIT_DIR, read_only=True),
                _volume("audit-log", AUDIT_LOG_DIR, read_only=False),
                _volume("encryption", ENCRYPTION_DIR, read_only=True),
            ],
        },
        "controllerManager": {
            "extraArgs": _args(CONTROLLER_MANAGER_FLAGS, extra.controller_manager),
            "extraEnvs": CONTROL_PLANE_ENV,
        },
        "scheduler": {"extraArgs": _args(SCHEDULER_FLAGS, extra.scheduler), "extraEnvs": CONTROL_PLANE_ENV},
        "etcd": {
            "local": {
                "dataDir": "/var/lib/etcd",
                "extraArgs": _args(ETCD_FLAGS, {}),
                "extraEnvs": CONTROL_PLANE_ENV,
            }
        },
    }
    return yaml.safe_dump_all([init, cluster, kubelet_config(cfg, node), proxy_config(cfg)], sort_keys=False)


def kubelet_config(cfg: MachineConfig, node: NodeFacts) -> dict[str, object]:
    """The kubelet's settings (CIS section 4.2), cgroupfs because the node has no systemd.

    Extra kubelet arguments from the config are flags (:func:`kubelet_flags`), which override these.
    """
    doc: dict[str, object] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": CRI_SOCKET,
        "authentication": {
            "anonymous": {"enabled": False},  # CIS 4.2.1
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(PKI_DIR / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},  # CIS 4.2.2
        "readOnlyPort": 0,  # CIS 4.2.4
        "protectKernelDefaults": True,  # CIS 4.2.6
        "rotateCertificates": True,  # CIS 4.2.11
        "tlsCertFile": str(KUBELET_SERVING / "kubelet.crt"),  # CIS 4.2.10, signed by the cluster CA
        "tlsPrivateKeyFile": str(KUBELET_SERVING / "kubelet.key"),
        "tlsMinVersion": "VersionTLS12",
        "tlsCipherSuites": STRONG_CIPHERS.split(","),  # CIS 4.2.13
        "streamingConnectionIdleTimeout": "5m0s",  # CIS 4.2.5
        "eventRecordQPS": 5,  # CIS 4.2.9
        "failSwapOn": False,
        "staticPodPath": "/etc/kubernetes/manifests",
        "resolvConf": "/run/talos/kubernetes/resolv.conf",  # node.kubelet_resolv_conf
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 95,
        "imageGCLowThresholdPercent": 90,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "5%", "imagefs.available": "5%"},
        "runtimeRequestTimeout": "10m0s",  # slow nodes: creating a sandbox can take minutes
        "nodeStatusUpdateFrequency": "10s",
    }
    return doc


def kubelet_flags(cfg: MachineConfig, node: NodeFacts) -> list[str]:
    """The kubelet's command line: its files, where kubeadm's TLS bootstrap leaves them, and extra args."""
    flags = {
        "config": "/var/lib/kubelet/config.yaml",
        "kubeconfig": "/etc/kubernetes/kubelet.conf",
        "bootstrap-kubeconfig": "/etc/kubernetes/bootstrap-kubelet.conf",
        "hostname-override": node.hostname,
        "node-ip": node.address,
        **{k: str(v) for k, v in cfg.cluster.kubernetes.extra_args.kubelet.items()},
    }
    return [f"--{k}={v}" for k, v in flags.items()]


def proxy_config(cfg: MachineConfig) -> dict[str, object]:
    """kube-proxy in iptables mode; it leaves the kernel's conntrack table size alone."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": ",".join(str(s) for s in cfg.cluster.network.pod_subnets),
        "conntrack": {"maxPerCore": 0, "min": 0},
    }


def _volume(name: str, path: PurePosixPath, *, read_only: bool) -> dict[str, object]:
    return {
        "name": name,
        "hostPath": str(path),
        "mountPath": str(path),
        "readOnly": read_only,
        "pathType": "DirectoryOrCreate",
    }


def _bracket(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def probe_patches() -> dict[str, str]:
    """JSON patches for kubeadm's static pods: probes that wait long enough for a slow node.

    The API server's probes become TCP probes because ``--anonymous-auth=false`` answers the
    kubelet's unauthenticated HTTP probes with 401 (which would restart a healthy server).
    """
    patches: dict[str, str] = {}
    slow = {"failureThreshold": 120, "periodSeconds": 10, "timeoutSeconds": 15, "initialDelaySeconds": 10}
    alive = {"failureThreshold": 30, "periodSeconds": 10, "timeoutSeconds": 15, "initialDelaySeconds": 10}
    tcp = {"tcpSocket": {"host": "127.0.0.1", "port": 6443}}
    ops = [
        {"op": "replace", "path": "/spec/containers/0/startupProbe", "value": {**tcp, **slow}},
        {"op": "replace", "path": "/spec/containers/0/livenessProbe", "value": {**tcp, **alive}},
        {
            "op": "replace",
            "path": "/spec/containers/0/readinessProbe",
            "value": {**tcp, **alive, "failureThreshold": 3},
        },
    ]
    patches["kube-apiserver+json.json"] = json.dumps(ops)
    for target in ("kube-controller-manager", "kube-scheduler", "etcd"):
        relax = [
            {"op": "replace", "path": f"/spec/containers/0/{probe}/{key}", "value": value}
            for probe, values in (("startupProbe", slow), ("livenessProbe", alive))
            for key, value in values.items()
        ]
        patches[f"{target}+json.json"] = json.dumps(relax)
    return patches


def encryption_config(secret_b64: str) -> str:
    """Secrets encrypted at rest with AES-CBC (CIS 1.2.27/1.2.28), the identity provider to read old data."""
    doc = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [
                    {"aescbc": {"keys": [{"name": "key1", "secret": secret_b64}]}},
                    {"identity": {}},
                ],
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _pair_files(pair: CertAndKey, stem: str) -> list[File]:
    files = [File(PKI_DIR / f"{stem}.crt", pair.crt_pem)]
    if pair.key is not None:
        files.append(File(PKI_DIR / f"{stem}.key", pki.b64decode(pair.key, what=f"{stem} key"), 0o600))
    return files


def control_plane_files(cfg: MachineConfig, node: NodeFacts) -> list[File]:
    """Everything kubeadm init reads on a control-plane node, before it runs."""
    cluster = cfg.cluster
    if cluster.ca.key is None or cluster.service_account is None:
        raise ValueError("a control-plane config needs cluster.ca.key and cluster.serviceAccount.key")
    files = [*_pair_files(cluster.ca, "ca")]
    if cluster.front_proxy_ca is not None:
        files += _pair_files(cluster.front_proxy_ca, "front-proxy-ca")
    if cluster.etcd_ca is not None:
        files += _pair_files(cluster.etcd_ca, "etcd/ca")
    sa_key = pki.b64decode(cluster.service_account.key, what="service account key")
    sa_pub = (
        pki.load_private_key(sa_key)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    files += [File(PKI_DIR / "sa.key", sa_key, 0o600), File(PKI_DIR / "sa.pub", sa_pub)]
    files += kubelet_serving_files(cfg, node)
    secret = cluster.aescbc_encryption_secret
    if secret is None:
        raise ValueError("a control-plane config needs cluster.aescbcEncryptionSecret")
    files.append(File(ENCRYPTION_DIR / "config.yaml", encryption_config(secret).encode(), 0o600))
    files.append(File(AUDIT_DIR / "policy.yaml", yaml.safe_dump(AUDIT_POLICY, sort_keys=False).encode()))
    files += [File(PATCHES_DIR / name, text.encode()) for name, text in probe_patches().items()]
    files.append(File(CONFIG_PATH, kubeadm_config(cfg, node).encode(), 0o600))
    return files


def kubelet_serving_files(cfg: MachineConfig, node: NodeFacts) -> list[File]:
    """The kubelet's serving certificate, signed by the cluster CA so the API server can verify it
    (``--kubelet-certificate-authority``) when it streams logs and exec sessions."""
    ca = cfg.cluster.ca
    if ca.key is None:
        return []
    pair = pki.issue_certificate(
        pki.CertKey.from_b64(ca.crt, ca.key),
        node.hostname,
        dns_names=[node.hostname],
        ip_addresses=[node.address, "127.0.0.1"],
        usage="server",
    )
    return [
        File(KUBELET_SERVING / "kubelet.crt", pair.cert_pem),
        File(KUBELET_SERVING / "kubelet.key", pair.key_pem, 0o600),
    ]
