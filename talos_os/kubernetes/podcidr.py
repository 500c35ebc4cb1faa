"""The ``cni`` service: once the controller manager has given this node its pod range, write the
CNI configuration for it (containerd then reports the network ready and the node turns Ready).

Runs as a one-shot under the init's supervisor, with the kubelet's own credentials (a node may
read its own Node object: the Node authorizer allows exactly that). It asks the API server
directly over HTTPS: starting kubectl for every poll costs seconds of CPU on a slow node.
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from talos_os import pki
from talos_os.kubernetes import cni, containerd

KUBECONFIG = Path("/etc/kubernetes/kubelet.conf")
POLL = 5.0


def say(message: str) -> None:
    print(f"[cni] {message}", flush=True)


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how the kubelet proves who it is."""

    server: str
    ca: bytes
    cert: bytes
    key: bytes


def _data_or_file(entry: dict[str, str], name: str, base: Path) -> bytes:
    if f"{name}-data" in entry:
        return base64.b64decode(entry[f"{name}-data"])
    path = Path(entry[name])
    return (path if path.is_absolute() else base / path).read_bytes()


def read_kubeconfig(path: Path) -> Credentials:
    """The first cluster and user of a kubeconfig (kubeadm's kubelet.conf has one of each)."""
    doc = yaml.safe_load(path.read_text())
    cluster = doc["clusters"][0]["cluster"]
    user = doc["users"][0]["user"]
    base = path.parent
    return Credentials(
        server=cluster["server"].rstrip("/"),
        ca=_data_or_file(cluster, "certificate-authority", base),
        cert=_data_or_file(user, "client-certificate", base),
        key=_data_or_file(user, "client-key", base),
    )


def node_pod_cidrs(creds: Credentials, node: str, timeout: float = 20.0) -> list[str]:
    """The Node's spec.podCIDRs (empty until the controller manager allocates them)."""
    context = ssl.create_default_context(cadata=creds.ca.decode())
    with tempfile.TemporaryDirectory(prefix="talos-cni-") as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        pki.write_secret(cert, creds.cert)
        pki.write_secret(key, creds.key)
        context.load_cert_chain(cert, key)
    with urllib.request.urlopen(
        f"{creds.server}/api/v1/nodes/{node}", context=context, timeout=timeout
    ) as resp:
        spec = json.load(resp).get("spec", {})
    return list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write this node's CNI config for its pod CIDR.")
    parser.add_argument("--node", required=True)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--kubeconfig", type=Path, default=KUBECONFIG)
    parser.add_argument("--conf-dir", type=Path, default=Path(containerd.CNI_CONF_DIR))
    args = parser.parse_args(argv)
    target = args.conf_dir / cni.CONFLIST_NAME
    deadline = time.monotonic() + args.timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            cidrs = node_pod_cidrs(read_kubeconfig(args.kubeconfig), args.node)
        except (OSError, ValueError, KeyError, ssl.SSLError) as exc:  # no kubeconfig, API or Node yet
            cidrs, why = [], str(exc)
        else:
            why = "no pod CIDR allocated yet"
        if cidrs:
            text = cni.conflist(cidrs)
            if not target.exists() or target.read_text() != text:
                args.conf_dir.mkdir(parents=True, exist_ok=True)
                pki.write_public(target, text.encode())
            say(f"pod network for {', '.join(cidrs)} in {target}")
            return 0
        if why != last:
            say(f"waiting for node {args.node}'s pod CIDR: {why}")
            last = why
        time.sleep(POLL)
    say(f"node {args.node} got no pod CIDR within {args.timeout:.0f} s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
