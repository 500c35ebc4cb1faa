"""trustd: control-plane nodes sign the certificates of nodes that join the cluster.

A worker's config carries the trustd endpoints and machine.token, but no CA key. At boot the
worker makes its own keys, sends certificate signing requests over TLS (verifying trustd against
the OS CA certificate it has) with the token, and gets back its osd server certificate (OS CA)
and its kubelet serving certificate (Kubernetes cluster CA). Keys never leave the node.

- :mod:`talos_os.trustd.server`: the ``trustd`` service on init and controlplane nodes, port 50001;
- :mod:`talos_os.trustd.client`: the ``identity`` one-shot on workers (osd waits for it);
- :mod:`talos_os.trustd.policy`: what a request may ask for (pure, tested on the host).
"""

from __future__ import annotations

from pathlib import Path

from talos_os import api  # noqa: F401 - before grpc: it makes grpc refuse TLS 1.2

PORT = 50001
KIND_OS = "os"
KIND_KUBELET = "kubelet"
KINDS = (KIND_OS, KIND_KUBELET)

# Where a worker keeps what trustd issued it (on /var: it survives reboots, the key never leaves).
IDENTITY_DIR = Path("/var/lib/talos/identity")
OSD_CERT = IDENTITY_DIR / "osd.crt"
OSD_KEY = IDENTITY_DIR / "osd.key"
KUBELET_CERT = Path("/var/lib/kubelet/pki/kubelet.crt")
KUBELET_KEY = Path("/var/lib/kubelet/pki/kubelet.key")
