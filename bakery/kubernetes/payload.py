"""Put the Kubernetes payload into the root filesystem tree: the binary, its command links, the
iptables links the node's CNI plugins call, and one OCI archive with every image kubeadm runs.

The images are made here from what the tree already holds (no registry, no engine):

- one shared layer with the multi-call binary, and a small layer per image naming its command;
- pause around Debian's catatonit (``catatonit -P`` is a pause process);
- kube-proxy also gets iptables (legacy backend) and conntrack with their libraries, which it
  runs inside its container.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bakery import elf
from bakery.errors import BakeError
from bakery.kubernetes import oci
from talos_os.kubernetes import versions

BIN = "usr/bin"
LAYER_BIN = "usr/local/bin"
CATATONIT = "usr/bin/catatonit"
XTABLES = "usr/sbin/xtables-legacy-multi"
XTABLES_COMMANDS = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
)
XTABLES_EXTENSIONS = "usr/lib/x86_64-linux-gnu/xtables"
CONNTRACK = "usr/sbin/conntrack"
MERGED_USR_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


@dataclass
class PayloadReport:
    """Sizes and digests for the manifest."""

    binary_bytes: int = 0
    archive_bytes: int = 0
    images: dict[str, str] = field(default_factory=dict)  # ref -> manifest digest


def install_binary(tree: Path, binary: Path) -> None:
    """``/usr/bin/k8s`` and the host's command links (kubelet, kubeadm, kubectl)."""
    dest = tree / BIN / "k8s"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, dest)
    dest.chmod(0o755)
    for name in versions.HOST_COMMANDS:
        _symlink(tree / BIN / name, "k8s")


def install_xtables_links(tree: Path) -> None:
    """Debian makes ``iptables`` an alternatives link at install time; the bake makes it itself."""
    if not (tree / XTABLES).exists():
        raise BakeError(f"the root filesystem has no /{XTABLES}: add the iptables package to rootfs.yaml")
    for name in XTABLES_COMMANDS:
        _symlink(tree / "usr/sbin" / name, "xtables-legacy-multi")


def _symlink(path: Path, target: str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def library_closure(tree: Path, executables: Iterable[str]) -> list[str]:
    """Paths (relative to the tree) of the executables, every library they load, transitively, and
    every symlink on the way, so that the set runs in an otherwise empty image."""
    wanted: set[str] = set()
    queue = [tree / rel for rel in executables]
    while queue:
        path = queue.pop()
        rel = str(path.relative_to(tree))
        if rel in wanted:
            continue
        wanted.add(rel)
        if path.is_symlink():
            target = elf.resolve_in_root(tree, path)
            if target is None:
                raise BakeError(f"/{rel} is a dangling link in the root filesystem")
            link = Path(os.readlink(path))
            hop = (tree / link.relative_to("/")) if link.is_absolute() else (path.parent / link)
            queue.append(tree / os.path.normpath(hop.relative_to(tree)))
            continue
        info = elf.read(path) if elf.is_elf(path) else None
        if info is None:
            continue
        found, missing = elf.resolve(tree, path.parent, info)
        if missing:
            raise BakeError(f"/{rel} needs {', '.join(missing)}, which the root filesystem lacks")
        queue.extend(found.values())
        if info.interpreter:  # by the path the kernel opens (a link in merged-usr), so the link comes along
            interp = tree / info.interpreter.lstrip("/")
            if elf.resolve_in_root(tree, interp) is None:
                raise BakeError(
                    f"/{rel} needs the loader {info.interpreter}, which the root filesystem lacks"
                )
            queue.append(interp)
    return sorted(_without_merged_prefix(wanted))


def _without_merged_prefix(paths: set[str]) -> set[str]:
    """``lib64/ld-linux...`` reached through a merged-usr link is ``usr/lib64/...`` in the tree."""
    out = set()
    for rel in paths:
        head, _, rest = rel.partition("/")
        out.add(f"{MERGED_USR_LINKS[head]}/{rest}" if head in MERGED_USR_LINKS and rest else rel)
    return out


def kube_proxy_layer_entries(tree: Path) -> list[oci.Entry]:
    """iptables (legacy), its extensions and conntrack, with libraries: what kube-proxy execs."""
    extensions = (
        sorted(str(p.relative_to(tree)) for p in (tree / XTABLES_EXTENSIONS).glob("*.so"))
        if (tree / XTABLES_EXTENSIONS).is_dir()
        else []
    )
    if not extensions:
        raise BakeError(f"the root filesystem has no /{XTABLES_EXTENSIONS}: add the iptables package")
    programs = [XTABLES, CONNTRACK, *extensions]
    paths = library_closure(tree, programs)
    entries = oci.copy_tree_entries(tree, paths)
    entries += [oci.Entry(f"usr/sbin/{name}", link="xtables-legacy-multi") for name in XTABLES_COMMANDS]
    entries += [oci.Entry(name, link=target) for name, target in MERGED_USR_LINKS.items()]
    entries.append(oci.Entry("run", 0o755))
    return entries


def pause_layer_entries(tree: Path) -> list[oci.Entry]:
    """catatonit at /catatonit, with its libraries if Debian built it dynamically."""
    src = tree / CATATONIT
    if not src.exists():
        raise BakeError(f"the root filesystem has no /{CATATONIT}: add the catatonit package to rootfs.yaml")
    paths = [p for p in library_closure(tree, [CATATONIT]) if p != CATATONIT]
    entries = oci.copy_tree_entries(tree, paths)
    entries.append(oci.Entry("catatonit", 0o755, source=src))
    if paths:
        entries += [oci.Entry(name, link=target) for name, target in MERGED_USR_LINKS.items()]
    return entries


def build_images(tree: Path, binary: Path, work: Path, epoch: int) -> tuple[Path, dict[str, str]]:
    """The OCI archive of every image the node runs; returns its path and ref -> manifest digest."""
    store = oci.BlobStore(work / "oci")
    shared = store.layer([oci.Entry(f"{LAYER_BIN}/k8s", 0o755, source=binary)], epoch)
    kube_proxy_extra = store.layer(kube_proxy_layer_entries(tree), epoch)
    pause = store.layer(pause_layer_entries(tree), epoch)
    images: list[oci.Image] = []
    for image in versions.images():
        if image.component == "pause":
            images.append(oci.Image(image.ref, [pause], entrypoint=["/catatonit", "-P"]))
            continue
        links = [oci.Entry(f"{LAYER_BIN}/{image.component}", link="k8s")]
        entrypoint = [f"/{LAYER_BIN}/{image.component}"]
        if image.component == "coredns":  # kubeadm's CoreDNS Deployment relies on the image's /coredns
            links.append(oci.Entry("coredns", link=f"{LAYER_BIN}/k8s"))
            entrypoint = ["/coredns"]
        layers = [shared, store.layer(links, epoch)]
        if image.component == "kube-proxy":
            layers.insert(0, kube_proxy_extra)
        images.append(oci.Image(image.ref, layers, entrypoint=entrypoint))
    archive = work / "images.oci.tar"
    digests = oci.write_archive(archive, store, images, epoch)
    return archive, digests


def install(tree: Path, binary: Path, work: Path, epoch: int) -> PayloadReport:
    """Everything Kubernetes needs in the tree; run before the tree is pruned (it reads Debian's files)."""
    install_binary(tree, binary)
    install_xtables_links(tree)
    archive, digests = build_images(tree, binary, work, epoch)
    dest = tree / versions.IMAGES_ARCHIVE.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(archive, dest)
    shutil.rmtree(work / "oci", ignore_errors=True)
    return PayloadReport(binary.stat().st_size, dest.stat().st_size, digests)
