"""The node's Kubernetes pieces that run on the host too: preparation against a temporary root,
containerd's files, the CNI config run through Debian's real plugins, the images check, the
containers listing, and the services plan."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from talos_os.config import MachineConfig
from talos_os.config.generate import GeneratedConfigs
from talos_os.init.services import KubernetesPlan, node_services
from talos_os.kubernetes import cni, containerd, images, node
from talos_os.kubernetes.kubeadm import NodeFacts
from talos_os.osd import containers

ID_A = "a" * 64
ID_B = "b" * 64


def test_prepare_writes_state_dirs_and_containerd_files(init_config: MachineConfig, tmp_path: Path) -> None:
    cfg = init_config.model_copy(deep=True)
    cfg.cluster.kubernetes.registry_mirrors["talos.test"] = ["http://10.0.2.101:5000"]
    written: dict[str, str] = {}
    shared: list[tuple[str, bool]] = []

    def sysctls(values: dict[str, str]) -> list[str]:
        written.update(values)
        return ["kernel.keys.root_maxbytes"]

    effects = node.Effects(sysctls, lambda p, b: shared.append((p, b)))
    absent = node.prepare(cfg, effects, "10.0.2.15", "# no name server\n", tmp_path)
    assert absent == ["kernel.keys.root_maxbytes"]
    assert written["net.ipv4.ip_forward"] == "1" and written["net.bridge.bridge-nf-call-iptables"] == "1"
    assert written["vm.overcommit_memory"] == "1" and written["kernel.panic"] == "10"  # protectKernelDefaults
    assert shared == [("/", False), ("/var/lib/kubelet", True)]
    assert oct((tmp_path / "var/lib/etcd").stat().st_mode & 0o777) == "0o700"
    config = (tmp_path / "run/talos/containerd/config.toml").read_text()
    assert 'sandbox_image = "registry.k8s.io/pause:3.10.2"' in config
    assert "SystemdCgroup = false" in config and 'bin_dir = "/usr/lib/cni"' in config
    assert (tmp_path / "run/talos/kubernetes/resolv.conf").read_text().endswith("nameserver 10.0.2.15\n")
    hosts = (tmp_path / "run/talos/containerd/certs.d/talos.test/hosts.toml").read_text()
    assert '[host."http://10.0.2.101:5000"]' in hosts and 'capabilities = ["pull", "resolve"]' in hosts


def test_containerd_config_is_valid_toml() -> None:
    import tomllib

    doc = tomllib.loads(containerd.config_toml())
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert doc["version"] == 2
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["registry"]["config_path"] == "/run/talos/containerd/certs.d"
    hosts = tomllib.loads(containerd.hosts_toml(["http://10.0.2.101:5000", "https://mirror.example"]))
    assert list(hosts["host"]) == ["http://10.0.2.101:5000", "https://mirror.example"]


@pytest.fixture()
def netns() -> Iterator[tuple[str, str]]:
    """Two throwaway network namespaces: the plugins' "host" and the pod's."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    names = (f"tcni-h-{uuid.uuid4().hex[:6]}", f"tcni-p-{uuid.uuid4().hex[:6]}")
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.skipif(
    not Path("/usr/lib/cni/bridge").exists(), reason="containernetworking-plugins is installed by make deps"
)
def test_conflist_runs_through_debians_plugins(netns: tuple[str, str], tmp_path: Path) -> None:
    """ADD then DEL with the real bridge/host-local/portmap plugins, all inside throwaway namespaces."""
    host_ns, pod_ns = netns
    conf = json.loads(cni.conflist(["10.244.0.0/24"]))
    env = {
        **os.environ,
        "CNI_CONTAINERID": "test",
        "CNI_NETNS": f"/var/run/netns/{pod_ns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
    }
    prev: dict[str, object] | None = None
    for plugin in conf["plugins"]:
        stdin = {**plugin, "name": conf["name"], "cniVersion": conf["cniVersion"]}
        if prev is not None:
            stdin["prevResult"] = prev
        result = subprocess.run(
            ["ip", "netns", "exec", host_ns, f"/usr/lib/cni/{plugin['type']}"],
            input=json.dumps(stdin), capture_output=True, text=True, env={**env, "CNI_COMMAND": "ADD"},
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        prev = json.loads(result.stdout)
    assert prev is not None
    [address] = [ip["address"] for ip in prev["ips"]]  # type: ignore[index]
    assert address.startswith("10.244.0.") and address.endswith("/24")
    pod = subprocess.run(
        ["ip", "-n", pod_ns, "-j", "addr", "show", "eth0"], capture_output=True, text=True, check=True
    )
    assert address.split("/")[0] in pod.stdout
    bridge = subprocess.run(
        ["ip", "-n", host_ns, "-j", "addr", "show", cni.BRIDGE], capture_output=True, text=True, check=True
    )
    assert "10.244.0.1" in bridge.stdout  # the bridge is the pods' gateway, inside the "host" namespace only
    for plugin in reversed(conf["plugins"]):
        stdin = {**plugin, "name": conf["name"], "cniVersion": conf["cniVersion"], "prevResult": prev}
        subprocess.run(
            ["ip", "netns", "exec", host_ns, f"/usr/lib/cni/{plugin['type']}"],
            input=json.dumps(stdin), capture_output=True, text=True, env={**env, "CNI_COMMAND": "DEL"}, check=True,
        )  # fmt: skip


def test_conflist_needs_a_cidr() -> None:
    with pytest.raises(ValueError, match="at least one pod CIDR"):
        cni.conflist([])


def _archive_with(tmp_path: Path, refs: dict[str, str]) -> Path:
    index = {
        "schemaVersion": 2,
        "manifests": [{"digest": d, "annotations": {images.NAME_ANNOTATION: r}} for r, d in refs.items()],
    }
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("oci-layout", b"{}"), ("index.json", json.dumps(index).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_images_check_imports_only_when_something_is_missing(tmp_path: Path) -> None:
    archive = _archive_with(
        tmp_path, {"registry.k8s.io/pause:3.10.2": "sha256:aa", "registry.k8s.io/etcd:3.6.8-0": "sha256:bb"}
    )
    wanted = images.archive_images(archive)
    listing = (
        "REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
        "registry.k8s.io/pause:3.10.2 application/vnd.oci.image.manifest.v1+json sha256:aa 680.0 KiB linux/amd64 -\n"
        "registry.k8s.io/etcd:3.6.8-0 application/vnd.oci.image.manifest.v1+json sha256:old 160.0 MiB linux/amd64 -\n"
    )
    assert images.missing(wanted, images.present_images(listing)) == ["registry.k8s.io/etcd:3.6.8-0"]
    assert (
        images.missing(
            wanted, {"registry.k8s.io/pause:3.10.2": "sha256:aa", "registry.k8s.io/etcd:3.6.8-0": "sha256:bb"}
        )
        == []
    )


def test_a_joining_node_imports_once_its_control_plane_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """Polled every 5 s, said at first and then every 300 s of waiting (not at every poll)."""
    answers = iter([False] * 70 + [True])
    naps: list[float] = []
    waited = images.wait_until_answers("10.5.0.2:6443", probe=lambda _e: next(answers), sleep=naps.append)
    assert waited == 350.0 and naps == [5.0] * 70
    said = capsys.readouterr().out.splitlines()
    assert said == [
        "[images] importing once the control plane at 10.5.0.2:6443 answers (0 s so far)",
        "[images] importing once the control plane at 10.5.0.2:6443 answers (300 s so far)",
    ]
    assert images.wait_until_answers("x:1", probe=lambda _e: True, sleep=naps.append) == 0.0


def test_answers_is_a_tcp_connect() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert images.answers(f"127.0.0.1:{port}")
    assert not images.answers(f"127.0.0.1:{port}", timeout=1)  # closed now: refused
    assert not images.answers("no-port-here")


def test_containers_listing_names_pods_from_the_cri_log_links() -> None:
    table = containers.parse_table(
        "CONTAINER    IMAGE    RUNTIME\n"
        f"{ID_A}    registry.k8s.io/kube-apiserver:v1.36.3    io.containerd.runc.v2\n"
        f"{ID_B}    registry.k8s.io/pause:3.10.2    io.containerd.runc.v2\n"
    )
    tasks = containers.parse_table(f"TASK PID STATUS\n{ID_A} 412 RUNNING\n{ID_B} 300 RUNNING\n")
    links = containers.parse_links(
        [f"kube-apiserver-node-1_kube-system_kube-apiserver-{ID_A}.log", "junk.log"]
    )
    found = containers.merge("k8s.io", table, tasks, links)
    assert [c.display_id for c in found] == ["kube-system/kube-apiserver-node-1:kube-apiserver", ID_B]
    api = found[0]
    assert (api.pid, api.status, api.image) == (412, "RUNNING", "registry.k8s.io/kube-apiserver:v1.36.3")
    assert containers.find(found, "kube-system/kube-apiserver-node-1:kube-apiserver") is api
    assert containers.find(found, "aaaa") is api
    with pytest.raises(containers.ContainerError, match="osctl containers -k"):
        containers.find(found, "cccc")


def test_container_log_lines_lose_the_cri_prefix(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_text(
        "2026-12-01T08:00:00.000000001Z stdout F request GET / from 10.244.0.1:5555\n"
        "2026-12-01T08:00:01.000000001Z stderr F second line\n"
    )
    pages = list(containers.read_log(log, tail=1, follow=False))
    assert pages == [["second line"]]
    assert containers.strip_cri("2026-12-01T08:00:00Z stdout P partial") == "partial"


def test_services_plan() -> None:
    plain = [s.name for s in node_services()]
    assert plain == ["containerd", "osd"]
    plan = KubernetesPlan("node-1", "10.0.2.15", bootstrap=True, kubelet_flags=("--node-ip=10.0.2.15",))
    specs = {s.name: s for s in node_services(kubernetes=plan)}
    assert list(specs) == ["containerd", "osd", "images", "kubeadm", "kubelet", "cni", "routes"]
    assert "--config" in specs["containerd"].argv
    assert specs["images"].oneshot and specs["images"].depends == ["containerd"]
    assert specs["kubelet"].depends == ["images"] and specs["kubelet"].argv[1:] == ["--node-ip=10.0.2.15"]
    assert [c.description for c in specs["kubelet"].conditions] == [
        "file /var/lib/kubelet/config.yaml exists"
    ]
    assert "--hostname" in specs["kubeadm"].argv and specs["cni"].depends == ["kubelet"]
    for go in ("containerd", "kubelet"):  # Go runtimes collect garbage less often (CPU under emulation)
        env = specs[go].env
        assert env is not None and env["GOGC"] == "200" and env["PATH"] == "/usr/sbin:/usr/bin"
    worker = {s.name for s in node_services(kubernetes=KubernetesPlan("w", "10.0.2.16", bootstrap=False))}
    assert "kubeadm" not in worker and "kubelet" in worker


def test_stop_pods_terms_then_kills_what_is_left() -> None:
    calls: list[list[str]] = []
    listings = iter(
        [
            f"TASK PID STATUS\n{ID_A} 10 RUNNING\n{ID_B} 11 RUNNING\n",
            f"TASK PID STATUS\n{ID_A} 10 STOPPED\n{ID_B} 11 RUNNING\n",
            f"TASK PID STATUS\n{ID_B} 11 RUNNING\n",
            f"TASK PID STATUS\n{ID_B} 11 RUNNING\n",
        ]
    )

    def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv[5:])
        out = next(listings).encode() if argv[5:7] == ["tasks", "ls"] else b""
        return subprocess.CompletedProcess(argv, 0, out, b"")

    said: list[str] = []
    assert node.stop_pods(run, said.append, grace=2.0, sleep=lambda _s: None) == 2
    kills = [c for c in calls if c[:2] == ["tasks", "kill"]]
    assert kills == [
        ["tasks", "kill", "--signal", "SIGTERM", ID_A],
        ["tasks", "kill", "--signal", "SIGTERM", ID_B],
        ["tasks", "kill", "--signal", "SIGKILL", ID_B],
    ]
    assert said == ["kubernetes: stopped 2 containers (1 killed after 2 s)"]


def test_pod_cidr_is_read_with_the_kubelets_credentials(tmp_path: Path) -> None:
    """A real HTTPS server that demands a client certificate from the cluster CA answers the Node."""
    import http.server
    import ssl
    import threading

    import yaml

    from talos_os import pki
    from talos_os.kubernetes import podcidr

    ca = pki.new_kubernetes_ca("kubernetes")
    server_pair = pki.issue_certificate(ca, "apiserver", ip_addresses=["127.0.0.1"], usage="server")
    client = pki.issue_certificate(ca, "system:node:node-1", organizations=["system:nodes"], usage="client")
    for name, data in (
        ("ca.crt", ca.cert_pem),
        ("srv.crt", server_pair.cert_pem),
        ("srv.key", server_pair.key_pem),
    ):
        (tmp_path / name).write_bytes(data)
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = json.dumps({"spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    context.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    context.verify_mode = ssl.CERT_REQUIRED
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        (tmp_path / "client.pem").write_bytes(client.cert_pem + client.key_pem)
        kubeconfig = tmp_path / "kubelet.conf"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "clusters": [{"name": "k", "cluster": {"server": f"https://127.0.0.1:{httpd.server_address[1]}",
                                                            "certificate-authority-data": pki.b64encode(ca.cert_pem)}}],
                    "users": [{"name": "u", "user": {"client-certificate": "client.pem", "client-key": "client.pem"}}],
                }
            )
        )  # fmt: skip
        conf_dir = tmp_path / "net.d"
        assert (
            podcidr.main(["--node", "node-1", "--kubeconfig", str(kubeconfig), "--conf-dir", str(conf_dir)])
            == 0
        )
    finally:
        httpd.shutdown()
    assert seen == ["/api/v1/nodes/node-1"]
    conf = json.loads((conf_dir / cni.CONFLIST_NAME).read_text())
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24"}]]


def _fake_kubeadm(tmp_path: Path, exit_code: int) -> tuple[Path, Path]:
    calls = tmp_path / "calls"
    script = tmp_path / "kubeadm"
    script.write_text(
        f"#!{shutil.which('python3')}\nimport sys\nopen({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\nsys.exit({exit_code})\n"
    )
    script.chmod(0o755)
    return script, calls


def test_bootstrap_runs_kubeadm_once_and_never_resets(
    generated: GeneratedConfigs, facts: NodeFacts, tmp_path: Path
) -> None:
    from talos_os.kubernetes import bootstrap

    config = tmp_path / "config.yaml"
    config.write_text(generated.init)
    (tmp_path / "f").mkdir()
    failing, calls = _fake_kubeadm(tmp_path / "f", 1)
    root = tmp_path / "root"
    assert bootstrap.bootstrap(config, facts, root, str(failing)) == 1
    assert calls.read_text().splitlines() == [
        "init --config /etc/kubernetes/kubeadm.yaml --skip-token-print --v=1"
    ]
    assert (root / "etc/kubernetes/pki/ca.key").exists() and (root / "etc/kubernetes/kubeadm.yaml").exists()
    # the failed attempt left a manifest behind: the retry runs over it, with preflight errors ignored
    (root / "etc/kubernetes/manifests").mkdir(parents=True, exist_ok=True)
    (root / "etc/kubernetes/manifests/kube-apiserver.yaml").write_text("kind: Pod\n")
    (tmp_path / "s").mkdir()
    working, calls = _fake_kubeadm(tmp_path / "s", 0)
    assert bootstrap.bootstrap(config, facts, root, str(working)) == 0
    [line] = calls.read_text().splitlines()
    assert "--ignore-preflight-errors" not in line and "reset" not in line
    # kubeadm refuses the flag next to the config's list of checks: the config itself says "all"
    docs = list(yaml.safe_load_all((root / "etc/kubernetes/kubeadm.yaml").read_text()))
    assert docs[0]["nodeRegistration"]["ignorePreflightErrors"] == ["all"]
    assert (root / "var/lib/talos/kubernetes/bootstrapped").exists()
    # bootstrapped: kubeadm is not run again
    assert bootstrap.bootstrap(config, facts, root, str(working)) == 0
    assert len(calls.read_text().splitlines()) == 1


def test_pods_get_the_nodes_name_servers_or_a_harmless_one() -> None:
    host = "search example.com\nnameserver 10.0.0.53\n"
    assert node.kubelet_resolv_conf(host, "10.0.2.15") == host
    fallback = node.kubelet_resolv_conf("# written by the talos-os init\n", "10.0.2.15")
    assert [ln for ln in fallback.splitlines() if not ln.startswith("#")] == ["nameserver 10.0.2.15"]
