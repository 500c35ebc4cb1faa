"""The node's services, as supervisor specs: the one place that says what runs on a node.

containerd and osd run on every node. With Kubernetes (every configured node):

- ``images``: a one-shot that checks, at every boot before the kubelet starts, that every baked
  image is in containerd's ``k8s.io`` namespace and imports the archive when any is missing, so
  garbage collection can never lose pause;
- ``kubeadm`` (init nodes): bootstraps the control plane once (:mod:`talos_os.kubernetes.bootstrap`);
- ``kubelet``: started by the init itself, as the original design did (kubeadm's kubelet-start
  phase expects systemd), once kubeadm has written its configuration;
- ``cni``: writes the pod network's configuration once the node has its pod range;
- ``routes``: routes to the other nodes' pod ranges (:mod:`talos_os.kubernetes.routes`);
- ``kubeadm`` (controlplane and worker nodes): joins the cluster once (:mod:`talos_os.kubernetes.join`).

Control planes also run ``trustd``; workers run ``identity``, which gets their certificates from it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from talos_os.init.runpaths import CONFIG_PATH
from talos_os.init.supervisor import Restart, ServiceSpec, file_exists
from talos_os.kubernetes import containerd
from talos_os.lib.control import DEFAULT_SOCKET

OSD_PORT = 50000
CONTAINERD_SOCKET = containerd.SOCKET
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
BOOTSTRAP_KUBECONFIG = "/etc/kubernetes/bootstrap-kubelet.conf"
# containerd and the kubelet are Go programs: they collect garbage at twice the default heap growth
# (as the control plane does, see kubernetes.kubeadm.CONTROL_PLANE_ENV). Under software emulation the
# kubelet was the node's largest CPU user, ahead of the API server; its heap is tens of MB.
GO_RUNTIME_ENV = {"GOGC": "200"}
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin", "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class KubernetesPlan:
    """What the node's Kubernetes services need to know: who the node is and its role."""

    hostname: str
    address: str
    bootstrap: bool  # an init node bootstraps the control plane
    kubelet_flags: tuple[str, ...] = ()
    join: bool = False  # controlplane and worker nodes join it (talos_os.kubernetes.join)
    control_plane: bool = True  # init and controlplane nodes; a worker's kubeadm waits for identity
    pod_subnets: tuple[str, ...] = ()  # the cluster's pod ranges (routes between nodes)
    control_plane_endpoint: str = (
        ""  # HOST:PORT a joining node's images wait for (talos_os.kubernetes.images)
    )


def node_services(
    *,
    env: Mapping[str, str] | None = None,
    osd_port: int = OSD_PORT,
    python: str = sys.executable,
    kubernetes: KubernetesPlan | None = None,
    identity: Identity | None = None,
) -> list[ServiceSpec]:
    """containerd and osd, trustd or identity (see :func:`identity_services`), and the Kubernetes
    services when there is a plan for them."""
    base_env = {**BASE_ENV, **(env or {})}
    containerd_argv = ["/usr/bin/containerd", "--address", CONTAINERD_SOCKET]
    if kubernetes is not None:
        containerd_argv += ["--config", str(containerd.CONFIG_PATH)]
    else:
        containerd_argv += ["--root", "/var/lib/containerd", "--state", "/run/containerd"]
    specs = [
        ServiceSpec(
            name="containerd",
            argv=containerd_argv,
            env={**base_env, **GO_RUNTIME_ENV},
            conditions=[file_exists("/var/lib")],
            restart=Restart.ALWAYS,
        ),
        osd_spec(
            base_env, python, osd_port, after_identity=identity is not None and not identity.control_plane
        ),
    ]
    if identity is not None:
        specs += identity_services(identity, base_env, python)
    if kubernetes is not None:
        specs += kubernetes_services(kubernetes, base_env, python)
    return specs


def osd_spec(
    env: Mapping[str, str] = BASE_ENV,
    python: str = sys.executable,
    port: int = OSD_PORT,
    after_identity: bool = False,
) -> ServiceSpec:
    """osd: the node API. A worker's waits for its identity from trustd. Every node's is the same
    command, so the init can park it before it knows the node's role (talos_os.init.early)."""
    return ServiceSpec(
        name="osd",
        argv=[
            *(python, "-m", "talos_os.osd"),
            *("--config", str(CONFIG_PATH), "--control-socket", str(DEFAULT_SOCKET), "--port", str(port)),
        ],
        env=env,
        depends=["identity"] if after_identity else [],
        conditions=[file_exists(CONFIG_PATH), file_exists(DEFAULT_SOCKET)],
        restart=Restart.ALWAYS,
    )


@dataclass(frozen=True)
class Identity:
    """Which side of trustd the node is on, and the names its certificates carry."""

    control_plane: bool
    hostname: str
    address: str


def identity_services(identity: Identity, env: Mapping[str, str], python: str) -> list[ServiceSpec]:
    """``trustd`` on control planes (signs joining nodes' CSRs, port 50001); ``identity`` on workers
    (gets osd's and the kubelet's certificates from trustd; osd and kubeadm wait for it)."""
    if identity.control_plane:
        return [
            ServiceSpec(
                name="trustd",
                argv=[python, "-m", "talos_os.trustd.server", "--config", str(CONFIG_PATH)],
                env=env,
                conditions=[file_exists(CONFIG_PATH)],
                restart=Restart.ALWAYS,
                backoff_cap=30.0,
            )
        ]
    argv = [python, "-m", "talos_os.trustd.client", "--config", str(CONFIG_PATH)]
    argv += ["--hostname", identity.hostname, "--address", identity.address]
    return [
        ServiceSpec(
            name="identity",
            argv=argv,
            env=env,
            conditions=[file_exists(CONFIG_PATH)],
            restart=Restart.ON_FAILURE,  # it retries trustd itself; this is for a crash
            oneshot=True,
            backoff_cap=60.0,
        )
    ]


def kubernetes_services(plan: KubernetesPlan, env: Mapping[str, str], python: str) -> list[ServiceSpec]:
    """images, kubeadm (init nodes), kubelet and cni."""
    specs = [
        ServiceSpec(
            name="images",
            argv=[python, "-m", "talos_os.kubernetes.images"]
            + (["--after", plan.control_plane_endpoint] if plan.join and plan.control_plane_endpoint else []),
            env=env,
            depends=["containerd"],
            conditions=[file_exists(CONTAINERD_SOCKET)],
            restart=Restart.ON_FAILURE,
            oneshot=True,
            backoff_cap=60.0,
        ),
    ]
    kubelet_depends = ["images"]
    if plan.bootstrap or plan.join:
        # kubeadm init on the init node, kubeadm join elsewhere; a worker's kubelet serving certificate
        # comes from trustd (the identity service) first
        module = "talos_os.kubernetes.bootstrap" if plan.bootstrap else "talos_os.kubernetes.join"
        identity = () if plan.bootstrap or plan.control_plane else ("identity",)
        specs.append(
            ServiceSpec(
                name="kubeadm",
                argv=[
                    python,
                    "-m",
                    module,
                    "--config",
                    str(CONFIG_PATH),
                    "--hostname",
                    plan.hostname,
                    "--address",
                    plan.address,
                ],
                env={**env, "KUBECONFIG": "/etc/kubernetes/admin.conf"} if plan.bootstrap else env,
                depends=["images", *identity],
                restart=Restart.ON_FAILURE,
                oneshot=False,  # the kubelet must run while kubeadm waits for the control plane / TLS bootstrap
                backoff_base=10.0,
                backoff_cap=120.0,
                stable_after=600.0,
                stop_timeout=30.0,
            )
        )
    specs += [
        ServiceSpec(
            name="kubelet",
            argv=["/usr/bin/kubelet", *plan.kubelet_flags],
            env={**env, **GO_RUNTIME_ENV},
            depends=kubelet_depends,
            conditions=[file_exists(KUBELET_CONFIG, interval=1.0)],
            restart=Restart.ALWAYS,
            backoff_cap=30.0,
            stop_timeout=30.0,
            log_lines=2000,
        ),
        ServiceSpec(
            name="cni",
            argv=[python, "-m", "talos_os.kubernetes.podcidr", "--node", plan.hostname],
            env=env,
            depends=["kubelet"],
            restart=Restart.ON_FAILURE,
            oneshot=True,
            backoff_cap=60.0,
        ),
        ServiceSpec(
            name="routes",
            argv=[
                python,
                "-m",
                "talos_os.kubernetes.routes",
                "--node",
                plan.hostname,
                *(f"--pod-subnet={s}" for s in plan.pod_subnets),
            ],
            env=env,
            depends=["kubelet"],
            restart=Restart.ALWAYS,
            backoff_cap=60.0,
        ),
    ]
    return specs
