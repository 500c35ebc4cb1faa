"""The cluster's admin kubeconfig, for ``osctl kubeconfig``.

Once Kubernetes is bootstrapped its own ``admin.conf`` is served. Before that (and on these
machines, where no Kubernetes server can run) a control-plane node can still hand out a real
admin kubeconfig: a client certificate for ``kubernetes-admin`` in ``system:masters`` signed by the
cluster CA from the machine config, pointing at ``cluster.controlPlane.endpoint``. A worker's
config carries no CA key, so it has none to give.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import yaml

from talos_os import pki

if TYPE_CHECKING:
    from talos_os.config import MachineConfig

ADMIN_USER = "kubernetes-admin"
ADMIN_GROUP = "system:masters"
VALIDITY = timedelta(days=365)


class NoKubeconfig(LookupError):
    """This node cannot make an admin kubeconfig; the message says why."""


def admin_kubeconfig(cfg: MachineConfig, validity: timedelta = VALIDITY) -> bytes:
    """A kubeconfig for the cluster admin, signed by the config's Kubernetes CA."""
    ca = cfg.cluster.ca
    if ca.key is None:
        raise NoKubeconfig("this node's config has no Kubernetes CA key (a worker): ask a control-plane node")
    ca_pair = pki.CertKey.from_b64(ca.crt, ca.key)
    client = pki.issue_certificate(
        ca_pair, ADMIN_USER, organizations=(ADMIN_GROUP,), usage="client", validity=validity
    )
    name = cfg.cluster.name
    user = f"admin@{name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": str(cfg.cluster.control_plane.endpoint).rstrip("/"),
                    "certificate-authority-data": pki.b64encode(ca_pair.cert_pem),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": pki.b64encode(client.cert_pem),
                    "client-key-data": pki.b64encode(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": name, "user": user}}],
        "current-context": user,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()
