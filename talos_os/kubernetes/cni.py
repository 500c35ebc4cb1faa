"""The node's pod network: Debian's bridge, host-local and portmap CNI plugins on the node's pod CIDR
(containerd adds the loopback plugin itself).

One bridge per node with the pod range the controller manager allocated to it; traffic that
leaves the range is masqueraded. A few nodes on one segment route to each other's pod ranges
(see the cluster issue); this file is the per-node half.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

BRIDGE = "cni0"
CONFLIST_NAME = "10-talos-bridge.conflist"


def conflist(pod_cidrs: Sequence[str], mtu: int = 1500) -> str:
    """The CNI network list for the node's pod CIDRs (IPv4 and/or IPv6)."""
    if not pod_cidrs:
        raise ValueError("a pod network needs at least one pod CIDR")
    ranges = [[{"subnet": cidr}] for cidr in pod_cidrs]
    routes = [{"dst": "::/0" if ":" in cidr else "0.0.0.0/0"} for cidr in pod_cidrs]
    doc = {
        "cniVersion": "0.4.0",
        "name": "talos",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "mtu": mtu,
                "ipam": {"type": "host-local", "ranges": ranges, "routes": routes},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(doc, indent=2) + "\n"
