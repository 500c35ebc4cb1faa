"""The Kubernetes payload this release of talos-os bakes, and the image names kubeadm expects for it.

The bakery builds exactly these versions (its recipe's go.mod is generated from ``KUBERNETES``)
and refuses to bake when kubeadm's own image list disagrees with ``images()``; the config
validator refuses any other ``cluster.kubernetes.version``, because a node has no other
Kubernetes to run and no internet to fetch one.
"""

from __future__ import annotations

from dataclasses import dataclass

KUBERNETES = "v1.36.3"
ETCD = "3.6.8-0"  # kubeadm's DefaultEtcdVersion for the release; the etcd module is v3.6.8
COREDNS = "v1.14.2"
PAUSE = "3.10.2"
REGISTRY = "registry.k8s.io"

# Where the payload sits in the root filesystem.
BINARY = "/usr/bin/k8s"
IMAGES_ARCHIVE = "/usr/share/talos/images.oci.tar"
HOST_COMMANDS = ("kubelet", "kubeadm", "kubectl")


@dataclass(frozen=True)
class Image:
    """One container image of the payload: its reference and the program it runs."""

    ref: str
    component: str  # the multi-call binary's command name (pause runs catatonit instead)


def images(version: str = KUBERNETES) -> list[Image]:
    """The images of the control plane and its addons, named as kubeadm pulls them."""
    return [
        Image(f"{REGISTRY}/kube-apiserver:{version}", "kube-apiserver"),
        Image(f"{REGISTRY}/kube-controller-manager:{version}", "kube-controller-manager"),
        Image(f"{REGISTRY}/kube-scheduler:{version}", "kube-scheduler"),
        Image(f"{REGISTRY}/kube-proxy:{version}", "kube-proxy"),
        Image(f"{REGISTRY}/coredns/coredns:{COREDNS}", "coredns"),
        Image(f"{REGISTRY}/pause:{PAUSE}", "pause"),
        Image(f"{REGISTRY}/etcd:{ETCD}", "etcd"),
    ]


def pause_image() -> str:
    """The sandbox image containerd must find locally (it is imported at every boot)."""
    return f"{REGISTRY}/pause:{PAUSE}"
