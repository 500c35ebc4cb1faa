"""The ``kubeadm`` service of controlplane and worker nodes: join the cluster once, idempotently.

- Control planes (``machine.type: controlplane``) join with ``kubeadm join --control-plane``: the
  shared CA material of their config (cluster, front-proxy and etcd CAs, the service-account key)
  is written to /etc/kubernetes/pki first, so kubeadm needs no certificate key and adds this node
  as an etcd member. The API server's audit policy, encryption config and probe patches are the
  init node's, from the same config.
- Workers join with the bootstrap token of their config. Their kubelet serving certificate came
  from trustd (the ``identity`` service).

Discovery is kubeadm's file discovery, not token discovery: token discovery reads the cluster-info
ConfigMap anonymously, and the API server runs with ``--anonymous-auth=false`` (CIS 1.2.1), so it
would get 401 forever. The discovery kubeconfig written here names the control-plane endpoint,
pins the whole cluster CA certificate of the config (stronger than the CA hash, which is logged),
and authenticates with the bootstrap token: kubeadm's cluster-info read is then refused with 403,
which it accepts as "the TLS certificate is valid, proceed".

Joined before (the stamp on /var exists): nothing to do, the kubelet restarts with the kubeconfig it
has. A join that did not finish left files kubeadm's preflight refuses: it runs again over them with
every preflight error ignored (in the JoinConfiguration: kubeadm refuses the flag next to a list).
Nothing is ever reset.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path, PurePosixPath

import yaml
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from talos_os import pki
from talos_os.config import MachineConfig, MachineType, load
from talos_os.config.model import CertAndKey
from talos_os.kubernetes import kubeadm
from talos_os.kubernetes.bootstrap import run_and_stamp
from talos_os.kubernetes.node import write_files

STAMP = Path("/var/lib/talos/kubernetes/joined")
JOIN_CONFIG = PurePosixPath("/etc/kubernetes/kubeadm-join.yaml")
DISCOVERY_KUBECONFIG = PurePosixPath("/etc/kubernetes/discovery.conf")
KUBEADM = "/usr/bin/kubeadm"
LEFTOVERS = (
    Path("/etc/kubernetes/kubelet.conf"),
    Path("/etc/kubernetes/bootstrap-kubelet.conf"),
    Path("/etc/kubernetes/manifests/kube-apiserver.yaml"),
    Path("/var/lib/etcd/member"),
)


def say(message: str) -> None:
    print(f"[join] {message}", flush=True)


def ca_cert_hash(ca: CertAndKey) -> str:
    """kubeadm's discovery hash: ``sha256:`` and the hex SHA-256 of the CA's SubjectPublicKeyInfo."""
    spki = ca.certificate().public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def join_config(cfg: MachineConfig, node: kubeadm.NodeFacts) -> str:
    """kubeadm's JoinConfiguration for this node (control planes get a controlPlane section)."""
    doc: dict[str, object] = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "JoinConfiguration",
        "discovery": {
            "file": {"kubeConfigPath": str(DISCOVERY_KUBECONFIG)},
            "tlsBootstrapToken": cfg.cluster.token,
        },
        "nodeRegistration": {
            "name": node.hostname,
            "criSocket": kubeadm.CRI_SOCKET,
            "taints": [],
            "ignorePreflightErrors": kubeadm.IGNORED_PREFLIGHT,
            "imagePullPolicy": "IfNotPresent",
            "kubeletExtraArgs": [{"name": "node-ip", "value": node.address}],
        },
        "timeouts": kubeadm.TIMEOUTS,
    }
    if cfg.machine.type is MachineType.CONTROLPLANE:
        doc["controlPlane"] = {"localAPIEndpoint": {"advertiseAddress": node.address, "bindPort": 6443}}
        doc["patches"] = {"directory": str(kubeadm.PATCHES_DIR)}
    return yaml.safe_dump(doc, sort_keys=False)


def discovery_kubeconfig(cfg: MachineConfig) -> str:
    """The control-plane endpoint, the cluster CA certificate and the bootstrap token."""
    name = cfg.cluster.name
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": f"https://{kubeadm.api_server_endpoint(cfg)}",
                    "certificate-authority-data": pki.b64encode(cfg.cluster.ca.crt_pem),
                },
            }
        ],
        "users": [{"name": "tls-bootstrap-token-user", "user": {"token": cfg.cluster.token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "tls-bootstrap-token-user"}}],
        "current-context": name,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def join_files(cfg: MachineConfig, node: kubeadm.NodeFacts, retry: bool = False) -> list[kubeadm.File]:
    """What kubeadm join reads: a control plane's shared CA material and API server files, the
    discovery kubeconfig and the JoinConfiguration (both 0600: they hold the bootstrap token)."""
    files: list[kubeadm.File] = []
    if cfg.machine.type is MachineType.CONTROLPLANE:
        files += [f for f in kubeadm.control_plane_files(cfg, node) if f.path != kubeadm.CONFIG_PATH]
    files.append(kubeadm.File(DISCOVERY_KUBECONFIG, discovery_kubeconfig(cfg).encode(), 0o600))
    text = join_config(cfg, node)
    files.append(
        kubeadm.File(JOIN_CONFIG, (kubeadm.ignore_all_preflight(text) if retry else text).encode(), 0o600)
    )
    return files


def join_argv(kubeadm_binary: str = KUBEADM) -> list[str]:
    return [kubeadm_binary, "join", "--config", str(JOIN_CONFIG), "--v=1"]


def join(
    config_path: Path, facts: kubeadm.NodeFacts, root: Path = Path("/"), kubeadm_binary: str = KUBEADM
) -> int:
    """Exit status for the supervisor: 0 once the node has (or already had) joined."""
    stamp = root / str(STAMP).lstrip("/")
    if stamp.exists():
        say(f"already joined ({stamp.read_text().strip()}); the kubelet restarts with its kubeconfig")
        return 0
    cfg = load(config_path)
    if cfg.machine.type is MachineType.INIT:
        say("an init node bootstraps the cluster (talos_os.kubernetes.bootstrap); it does not join")
        return 1
    retry = any((root / str(p).lstrip("/")).exists() for p in LEFTOVERS)
    if retry:
        say("an earlier join did not finish: running kubeadm join again over what it left")
    write_files(join_files(cfg, facts, retry), root)
    role = "control plane" if cfg.machine.type is MachineType.CONTROLPLANE else "worker"
    say(
        f"joining {kubeadm.api_server_endpoint(cfg)} as a {role} (CA pinned by {ca_cert_hash(cfg.cluster.ca)[:19]}...)"
    )
    return run_and_stamp(join_argv(kubeadm_binary), stamp, f"joined the cluster as a {role}", say)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Join this node to the cluster with kubeadm.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args(argv)
    return join(args.config, kubeadm.NodeFacts(args.hostname, args.address))


if __name__ == "__main__":
    sys.exit(main())
