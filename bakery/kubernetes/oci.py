"""OCI images written in Python, without a container engine: layers, configs, manifests, one archive.

An archive is an OCI image layout in a tar (``oci-layout``, ``index.json``, ``blobs/sha256/...``)
that ``ctr images import`` and skopeo's ``oci-archive:`` both read. Several images go into one
archive and share blobs: the Kubernetes binary is one layer stored once, whatever number of
images use it. Layers are plain (uncompressed) tars: the archive sits in the compressed squashfs
and containerd imports it without spending emulated CPU on decompression. Everything is
reproducible: sorted entries, owner root, one fixed timestamp.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from talos_os.lib.atomic import atomic_path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
NAME_ANNOTATION = "io.containerd.image.name"  # what containerd names the imported image
REF_ANNOTATION = "org.opencontainers.image.ref.name"  # what skopeo's oci-archive:PATH:REF matches


@dataclass(frozen=True)
class Entry:
    """One path in a layer: a regular file (from ``source`` or ``data``), a symlink or a directory."""

    path: str  # relative to the image root, no leading slash
    mode: int = 0o755
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.source is None and self.data is None and self.link is None


@dataclass(frozen=True)
class Blob:
    """Content-addressed bytes on disk."""

    path: Path
    digest: str  # "sha256:..."
    size: int

    def descriptor(self, media_type: str, annotations: dict[str, str] | None = None) -> dict[str, object]:
        desc: dict[str, object] = {"mediaType": media_type, "digest": self.digest, "size": self.size}
        if annotations:
            desc["annotations"] = annotations
        return desc


@dataclass
class Image:
    """An image to write: its reference, layers (bottom first) and how it starts."""

    ref: str
    layers: Sequence[Blob]
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    working_dir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)


class BlobStore:
    """A directory of blobs named by their sha256, deduplicated by content."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def put_bytes(self, data: bytes) -> Blob:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / "sha256" / digest
        if not path.exists():
            path.write_bytes(data)
        return Blob(path, f"sha256:{digest}", len(data))

    def put_json(self, doc: object) -> Blob:
        return self.put_bytes(canonical_json(doc))

    def layer(self, entries: Iterable[Entry], epoch: int) -> Blob:
        """A layer tar of ``entries`` (parents created, sorted, root-owned, one mtime)."""
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".layer-")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as raw:
            hasher = _HashingWriter(raw)
            write_layer(hasher, entries, epoch)
        digest = hasher.sha256.hexdigest()
        path = self.root / "blobs" / "sha256" / digest
        if path.exists():
            tmp.unlink()
        else:
            tmp.rename(path)
        return Blob(path, f"sha256:{digest}", hasher.size)


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, out: io.BufferedWriter) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha256.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)


def canonical_json(doc: object) -> bytes:
    """Stable JSON bytes (sorted keys, no spaces): the same document always has the same digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def write_layer(out: io.RawIOBase, entries: Iterable[Entry], epoch: int) -> None:
    """Write a reproducible layer tar: missing parent directories added, entries sorted by path."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = entry.path.strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"layer path {entry.path!r} is not a relative path inside the image")
        for parent in _parents(path):
            by_path.setdefault(parent, Entry(parent))
        by_path[path] = Entry(path, entry.mode, entry.source, entry.data, entry.link)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(by_path):
            entry = by_path[path]
            info = tarfile.TarInfo(path)
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = entry.mode
            if entry.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = entry.link
                info.mode = 0o777
                tar.addfile(info)
            elif entry.is_dir:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.data is not None:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                assert entry.source is not None
                info.size = entry.source.stat().st_size
                with open(entry.source, "rb") as src:
                    tar.addfile(info, src)


def image_config(image: Image, epoch: int) -> dict[str, object]:
    """The OCI image config: platform, how to run, and the layers' diff ids (plain tars: their digests)."""
    config: dict[str, object] = {"Env": list(image.env), "WorkingDir": image.working_dir}
    if image.entrypoint:
        config["Entrypoint"] = list(image.entrypoint)
    if image.cmd:
        config["Cmd"] = list(image.cmd)
    if image.labels:
        config["Labels"] = dict(image.labels)
    created = _rfc3339(epoch)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in image.layers]},
        "history": [{"created": created, "created_by": "talos-bake"} for _ in image.layers],
    }


def _rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_archive(out: Path, store: BlobStore, images: Sequence[Image], epoch: int) -> dict[str, str]:
    """Write ``images`` as one OCI layout tar at ``out`` (atomically); returns each ref's manifest digest."""
    manifests: list[dict[str, object]] = []
    digests: dict[str, str] = {}
    used: set[Path] = set()
    for image in images:
        config = store.put_json(image_config(image, epoch))
        manifest = store.put_json(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": config.descriptor(CONFIG_MEDIA_TYPE),
                "layers": [layer.descriptor(LAYER_MEDIA_TYPE) for layer in image.layers],
            }
        )
        used.update([config.path, manifest.path, *(layer.path for layer in image.layers)])
        manifests.append(
            manifest.descriptor(MANIFEST_MEDIA_TYPE, {NAME_ANNOTATION: image.ref, REF_ANNOTATION: image.ref})
        )
        digests[image.ref] = manifest.digest
    index = canonical_json({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests})
    layout = canonical_json({"imageLayoutVersion": "1.0.0"})
    with (
        atomic_path(out) as tmp,
        open(tmp, "wb") as raw,
        tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_bytes(tar, "oci-layout", layout, epoch)
        _add_bytes(tar, "index.json", index, epoch)
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for path in sorted(used):
            info = tarfile.TarInfo(f"blobs/sha256/{path.name}")
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, epoch
            with open(path, "rb") as src:
                tar.addfile(info, src)
    return digests


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, epoch
    tar.addfile(info, io.BytesIO(data))


def read_index(archive: Path) -> dict[str, str]:
    """ref -> manifest digest of an archive written by :func:`write_archive` (for checks and tests)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    return {m["annotations"][NAME_ANNOTATION]: m["digest"] for m in index["manifests"]}


def copy_tree_entries(root: Path, paths: Iterable[str]) -> list[Entry]:
    """Entries for files and symlinks taken from a directory tree (modes kept, links as links)."""
    entries = []
    for rel in paths:
        src = root / rel
        if src.is_symlink():
            entries.append(Entry(rel, link=os.readlink(src)))
        elif src.is_dir():
            entries.append(Entry(rel, mode=src.stat().st_mode & 0o7777))
        else:
            entries.append(Entry(rel, mode=src.stat().st_mode & 0o755, source=src))
    return entries


__all__ = [
    "Blob",
    "BlobStore",
    "Entry",
    "Image",
    "copy_tree_entries",
    "image_config",
    "read_index",
    "write_archive",
    "write_layer",
]
