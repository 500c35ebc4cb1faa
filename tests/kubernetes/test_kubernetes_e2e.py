"""An init node boots the baked image into a working one-node Kubernetes cluster (QEMU, TCG, 4 GiB).

One node serves the whole module, in order: it becomes Ready; the control plane runs with the CIS
flags (read through osctl); osctl shows kubelet and the static pods; a Deployment of the tests'
workload image, pulled from a local registry through the config's registry mirror, reaches two
replicas; logs, exec, a ClusterIP Service and cluster DNS work; after a reboot the cluster comes
back with its data. Nothing leaves the machine: the registry is on loopback, forwarded by QEMU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bakery.image import BakeResult
from talos_os.kubernetes import kubeadm
from tools import kubenode, nodevm, workload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(5400)]

IMAGE = f"{kubenode.MIRRORED}/hello:1"
DEPLOYMENT = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: hello}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      containers:
      - name: hello
        image: {IMAGE}
        imagePullPolicy: Always
        ports: [{{containerPort: 8080}}]
        securityContext: {{allowPrivilegeEscalation: false, runAsNonRoot: true, runAsUser: 65534,
                           capabilities: {{drop: [ALL]}}, seccompProfile: {{type: RuntimeDefault}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: hello, namespace: default}}
spec:
  selector: {{app: hello}}
  ports: [{{port: 8080, targetPort: 8080}}]
"""


@pytest.fixture(scope="module")
def node(baked_image: BakeResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[kubenode.KubeNode]:
    work = tmp_path_factory.mktemp("kubernetes")
    archive = workload.hello_archive(work / "hello", IMAGE)
    with workload.registry() as registry:
        registry.push(archive, IMAGE, "hello:1")
        image = nodevm.NodeImage.from_manifest(baked_image.manifest)
        with kubenode.kube_node(
            image, baked_image.raw.parent / "kubectl", work, registry_port=registry.port
        ) as n:
            yield n


def test_the_node_becomes_ready(node: kubenode.KubeNode) -> None:
    times = node.wait_kubernetes()
    print(f"seconds: {times}")
    nodes = json.loads(node.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == [kubenode.HOSTNAME]
    info = nodes[0]["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3"
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    assert node.kubectl("get", "--raw", "/readyz").stdout == "ok"


def _containers(node: kubenode.KubeNode) -> dict[str, dict[str, object]]:
    listing = node.osctl("containers", "-k", "-o", "json")
    assert listing.returncode == 0, listing.stderr
    found: dict[str, dict[str, object]] = {}
    for c in json.loads(listing.stdout):
        key = f"{c['pod']}:{c['name']}"
        # a restarted component leaves its exited container beside the running one: the running one wins
        if c.get("pod") and (key not in found or c["status"] == "RUNNING"):
            found[key] = c
    return found


def test_control_plane_runs_with_the_cis_flags(node: kubenode.KubeNode) -> None:
    running = _containers(node)
    flags = {
        "kube-apiserver": kubeadm.API_SERVER_FLAGS,
        "kube-controller-manager": kubeadm.CONTROLLER_MANAGER_FLAGS,
        "kube-scheduler": kubeadm.SCHEDULER_FLAGS,
    }
    for component, wanted in flags.items():
        name = f"kube-system/{component}-{kubenode.HOSTNAME}:{component}"
        assert running[name]["status"] == "RUNNING", running[name]
        cmdline = node.osctl("read", f"/proc/{running[name]['pid']}/cmdline")
        assert cmdline.returncode == 0, cmdline.stderr
        args = set(cmdline.stdout.split("\0"))
        missing = [f"--{k}={v}" for k, v in wanted.items() if f"--{k}={v}" not in args]
        assert not missing, f"{component} lacks {missing}"
    etcd = f"kube-system/etcd-{kubenode.HOSTNAME}:etcd"
    etcd_args = node.osctl("read", f"/proc/{running[etcd]['pid']}/cmdline").stdout.split("\0")
    assert "--client-cert-auth=true" in etcd_args and "--peer-client-cert-auth=true" in etcd_args
    kubelet = node.osctl("read", "/var/lib/kubelet/config.yaml")
    assert kubelet.returncode == 0, kubelet.stderr
    config = yaml.safe_load(kubelet.stdout)  # the kubelet's config as kubeadm wrote it (0 values omitted)
    assert config.get("readOnlyPort", 0) == 0 and config["protectKernelDefaults"] is True
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook" and config["rotateCertificates"] is True


def test_osctl_shows_kubelet_and_the_static_pods(node: kubenode.KubeNode) -> None:
    services = {s["id"]: s for s in json.loads(node.osctl("services", "-o", "json").stdout)}
    assert services["kubelet"]["state"] == "running"
    assert services["kubeadm"]["state"] == "finished" and services["images"]["state"] == "finished"
    assert node.osctl("logs", "kubelet", "--tail", "5").stdout.strip()
    apiserver = f"kube-system/kube-apiserver-{kubenode.HOSTNAME}:kube-apiserver"
    logs = node.osctl("logs", "-k", apiserver, "--tail", "20")
    assert logs.returncode == 0 and logs.stdout.strip(), logs.stderr


def test_a_deployment_pulled_through_the_mirror_serves(node: kubenode.KubeNode) -> None:
    node.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    started = time.monotonic()
    node.kubectl("rollout", "status", "deployment/hello", "--timeout=1500s", timeout=1600)
    print(f"deployment available after {time.monotonic() - started:.0f} s")
    pods = json.loads(node.kubectl("get", "pods", "-l", "app=hello", "-o", "json").stdout)["items"]
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
    first = pods[0]["metadata"]["name"]
    # Services need kube-proxy's rules and names need CoreDNS: both are addons that start with the node
    node.kubectl(
        "-n", "kube-system", "rollout", "status", "daemonset/kube-proxy", "--timeout=1200s", timeout=1300
    )
    node.kubectl(
        "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=1200s", timeout=1300
    )
    service_ip = node.kubectl("get", "service", "hello", "-o", "jsonpath={.spec.clusterIP}").stdout
    for url in (f"http://{service_ip}:8080/", "http://hello.default.svc.cluster.local:8080/"):

        def served(url: str = url) -> bool:
            got = node.kubectl("exec", first, "--", "/hello", "get", url, timeout=300, check=False)
            return got.stdout.startswith("hello from hello-")

        # kube-proxy writes a new Service's rules within seconds of seeing it; a slow node takes longer
        node.wait(f"{url} answering from pod {first}", served, 600, every=10)
    logs = "".join(node.kubectl("logs", p["metadata"]["name"]).stdout for p in pods)
    assert "hello serving on :8080" in logs and "request GET /" in logs


def test_the_cluster_survives_a_reboot(node: kubenode.KubeNode) -> None:
    since = len(node.vm.lines)
    result = node.osctl("reboot")
    assert result.returncode == 0, result.stderr
    _host, _s = nodevm.wait_ready(node.vm, 900, since)
    node.wait(
        "the API server after the reboot",
        lambda: node.kubectl("get", "--raw", "/readyz", check=False).stdout == "ok",
        2400,
    )
    node.wait(f"node {kubenode.HOSTNAME} Ready again", node.node_ready, 2400)
    node.kubectl("rollout", "status", "deployment/hello", "--timeout=1500s", timeout=1600)
    assert "already bootstrapped" in node.osctl("logs", "kubeadm").stdout
    assert Path(node.workdir / "kubeconfig").exists()
