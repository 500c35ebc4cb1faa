"""The ``cni`` service: once the controller manager has given this node its pod range, write the
CNI configuration for it (containerd then reports the network ready and the node turns Ready).

Runs as a one-shot under the init's supervisor, with the kubelet's own credentials: a node may
read its own Node object (the Node authorizer allows exactly that).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from talos_os import pki
from talos_os.kubernetes import cni, containerd

KUBECTL = "/usr/bin/kubectl"
KUBECONFIG = "/etc/kubernetes/kubelet.conf"
POLL = 3.0


def say(message: str) -> None:
    print(f"[cni] {message}", flush=True)


def node_pod_cidrs(node: str, kubeconfig: str = KUBECONFIG) -> list[str]:
    """The Node's spec.podCIDRs, or nothing yet (no Node, no API, no range allocated)."""
    out = subprocess.run(
        [KUBECTL, "--kubeconfig", kubeconfig, "get", "node", node, "-o", "json", "--request-timeout=20s"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        say(f"waiting for node {node}: {out.stderr.strip().splitlines()[-1:] or ['no answer']}")
        return []
    spec = json.loads(out.stdout).get("spec", {})
    return list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write this node's CNI config for its pod CIDR.")
    parser.add_argument("--node", required=True)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--conf-dir", type=Path, default=Path(containerd.CNI_CONF_DIR))
    args = parser.parse_args(argv)
    target = args.conf_dir / cni.CONFLIST_NAME
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not Path(KUBECONFIG).exists():
            time.sleep(POLL)
            continue
        cidrs = node_pod_cidrs(args.node)
        if cidrs:
            text = cni.conflist(cidrs)
            if not target.exists() or target.read_text() != text:
                args.conf_dir.mkdir(parents=True, exist_ok=True)
                pki.write_public(target, text.encode())
            say(f"pod network for {', '.join(cidrs)} in {target}")
            return 0
        time.sleep(POLL)
    say(f"node {args.node} got no pod CIDR within {args.timeout:.0f} s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
