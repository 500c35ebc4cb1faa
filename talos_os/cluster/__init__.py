"""``osctl cluster``: a local multi-node cluster of QEMU VMs on the host (host side only).

The nodes live in a network namespace of the cluster's own (a bridge, dnsmasq for DHCP, one tap
per node); the host reaches their APIs only through forwards on 127.0.0.1. Nothing on a node
imports this package.
"""
