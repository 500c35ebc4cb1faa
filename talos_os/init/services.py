"""The node's services, as supervisor specs: the one place that says what runs on a node.

containerd runs as a plain process for now (the next step moves system services into containerd's
``system`` namespace); osd is the API. trustd and the kubelet are not started: there is no
Kubernetes to join on these machines yet (see the README).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from talos_os.init.apply import CONFIG_PATH
from talos_os.init.control import DEFAULT_SOCKET
from talos_os.init.supervisor import Restart, ServiceSpec, file_exists

OSD_PORT = 50000
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"


def node_services(
    *,
    env: Mapping[str, str] | None = None,
    osd_port: int = OSD_PORT,
    python: str = sys.executable,
) -> list[ServiceSpec]:
    """containerd and osd, with the conditions each needs before it may start."""
    base_env = {"PATH": "/usr/sbin:/usr/bin", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return [
        ServiceSpec(
            name="containerd",
            argv=[
                "/usr/bin/containerd",
                "--address",
                CONTAINERD_SOCKET,
                "--root",
                "/var/lib/containerd",
                "--state",
                "/run/containerd",
            ],
            env=base_env,
            conditions=[file_exists("/var/lib")],
            restart=Restart.ALWAYS,
        ),
        ServiceSpec(
            name="osd",
            argv=[
                python,
                "-m",
                "talos_os.osd",
                "--config",
                str(CONFIG_PATH),
                "--control-socket",
                str(DEFAULT_SOCKET),
                "--port",
                str(osd_port),
            ],
            env=base_env,
            conditions=[file_exists(CONFIG_PATH), file_exists(DEFAULT_SOCKET)],
            restart=Restart.ALWAYS,
        ),
    ]
