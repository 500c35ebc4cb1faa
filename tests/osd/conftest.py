"""A node on loopback: osd wired to a real Supervisor (harmless processes) through a real control socket.

Nothing of the API layer is mocked: the services are real processes (in real cgroups when the host's
cgroup2 hierarchy is writable), the control socket is a real unix socket, the files are real files.
Only the machine's power is fake: reboot/shutdown/reset handlers record the request.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from osdenv import KMSG_RECORDS, Cluster, Node, T, remove_groups

from talos_os import pki
from talos_os.config import loads
from talos_os.config.generate import generate
from talos_os.init.control import ControlServer, network_handlers, supervisor_handlers
from talos_os.init.supervisor import Restart, ServiceSpec, State, Supervisor
from talos_os.lib import netinfo
from talos_os.osd.auth import server_identity
from talos_os.osd.server import Osd, Settings


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    files = generate("osdtest", "https://127.0.0.1:6443").files()
    config = loads(files["init.yaml"])
    assert config.machine.ca.key is not None
    ca = pki.CertKey.from_b64(config.machine.ca.crt, config.machine.ca.key)
    return Cluster(config, files["init.yaml"], files["worker.yaml"], ca)


@pytest.fixture(scope="module")
def node(
    cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
    ticker: Callable[[Path], list[str]],
    writable_cgroup2: Path | None,
) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("node")
    # What readers may read: outside pytest's own temp dir, which only root can enter.
    public = Path(tempfile.mkdtemp(prefix="talos-osd-public-"))
    public.chmod(0o755)
    trigger = root / "trigger"
    trigger.write_text("0")
    config_path = root / "run" / "config.yaml"
    config_path.parent.mkdir()
    pki.write_secret(config_path, cluster.config_text.encode())
    kmsg = root / "kmsg"
    kmsg.write_text("\n".join(KMSG_RECORDS) + "\n")

    mount = writable_cgroup2
    cgroup_root = mount / f"talos-osdtest-{uuid.uuid4().hex[:8]}" if mount is not None else None
    sup = Supervisor(log_dir=root / "var" / "log", cgroup_root=cgroup_root)
    sup.add(ServiceSpec("ticker", ticker(trigger), restart=Restart.ALWAYS))
    sup.add(ServiceSpec("sleeper", ["sleep", "3600"], restart=Restart.ALWAYS, stop_timeout=5))
    sup.add(ServiceSpec("once", ["sh", "-c", "echo once done"], restart=Restart.NEVER, oneshot=True))
    sup.start()
    assert sup.wait_for("ticker", [State.RUNNING], T) and sup.wait_for("sleeper", [State.RUNNING], T)
    assert sup.wait_for("once", [State.FINISHED], T)

    actions: list[str] = []
    handlers = (
        supervisor_handlers(
            sup,
            reboot=lambda: actions.append("reboot"),
            shutdown=lambda: actions.append("shutdown"),
            reset=lambda: actions.append("reset"),
        )
        | network_handlers()
    )
    control = ControlServer(root / "run" / "init.sock", handlers, allowed_uids={os.getuid()})
    control.start()
    settings = Settings(
        control_socket=control.path,
        kmsg=kmsg,
        kubeconfig=root / "etc" / "kubernetes" / "admin.conf",
        cgroup_prefix=f"/{cgroup_root.relative_to(mount)}" if cgroup_root is not None and mount else "/talos",
        secret_paths=(config_path,),
        reader_trees=("/proc", "/sys", str(public)),
    )
    identity, _source = server_identity(cluster.config, netinfo.addresses(), "osd-test-node")
    osd = Osd(identity, cluster.ca.cert_pem, settings, address="127.0.0.1", port=0)
    osd.start()
    n = Node(
        root, osd, sup, control, settings, trigger, actions, cgroups=cgroup_root is not None, public=public
    )
    n.wait_log_lines("ticker", 1)
    try:
        yield n
    finally:
        osd.stop(grace=0)
        control.stop()
        sup.shutdown(timeout=2)
        if sup.cgroups is not None:
            remove_groups(sup.cgroups)
        shutil.rmtree(public, ignore_errors=True)
