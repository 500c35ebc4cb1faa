"""The upgrade bundle: one uncompressed tar holding ``manifest.json`` first, then the kernel, the
initramfs and the root squashfs.

The manifest names the version, the architecture, extra kernel arguments for the slot, and each
part's size and sha256. The bakery writes it (``bakery/upgrade_bundle.py``); the node reads it with
the standard library only and verifies *everything* (manifest, architecture, every part's size and
sha256, the kernel's own header) before a byte goes to a disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FORMAT = "talos-upgrade/1"
MANIFEST = "manifest.json"
PARTS = ("kernel", "initramfs", "root")
FILENAMES = {"kernel": "vmlinuz", "initramfs": "initramfs.zst", "root": "root.sqsh"}
CHUNK = 1 << 20
# A kernel command-line word the bundle may ask for: no quotes, spaces or GRUB specials.
_ARG = re.compile(r"^[A-Za-z0-9_.,:/=+@%-]+$")
_VERSION = re.compile(r"^[A-Za-z0-9_.+~-]{1,64}$")
SQUASHFS_MAGIC = b"hsqs"
BZIMAGE_MAGIC = b"HdrS"  # x86 boot protocol header at 0x202


class BundleError(Exception):
    """The bundle cannot be used; one sentence saying what is wrong with it."""


@dataclass(frozen=True)
class Part:
    """One file of an upgrade bundle (root squashfs, kernel, initramfs) with its size and sha256: a
    part of the bundle, not a disk partition (those are :class:`talos_os.lib.gpt.GptPartition`)."""

    name: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    version: str
    arch: str
    kernel_release: str
    kernel_args: str
    parts: dict[str, Part]

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": self.version,
            "arch": self.arch,
            "kernel_release": self.kernel_release,
            "kernel_args": self.kernel_args,
            "parts": {
                name: {"file": p.filename, "size": p.size, "sha256": p.sha256}
                for name, p in self.parts.items()
            },
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _field(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(
            f"the bundle's manifest has no valid {key!r}: it is damaged or not a talos-os bundle"
        )
    return value


def parse_manifest(raw: bytes) -> Manifest:
    """A manifest from its JSON, every field checked."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BundleError("the bundle's manifest is not JSON: the file is damaged") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"the bundle's manifest is not format {FORMAT}: build it with `talos-bake upgrade`")
    version = _field(data, "version", str)
    if not _VERSION.match(version):
        raise BundleError(f"the bundle's version {version[:64]!r} is not a version string")
    args = _field(data, "kernel_args", str)
    if any(not _ARG.match(word) for word in args.split()):
        raise BundleError("the bundle's kernel arguments hold characters a boot entry cannot carry")
    parts_data = _field(data, "parts", dict)
    parts = {}
    for name in PARTS:
        entry = parts_data.get(name)
        if not isinstance(entry, dict):
            raise BundleError(f"the bundle's manifest lists no {name}: it is incomplete")
        size, digest = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or size <= 0 or not isinstance(digest, str) or len(digest) != 64:
            raise BundleError(f"the bundle's manifest entry for {name} has no valid size and sha256")
        parts[name] = Part(name, FILENAMES[name], size, digest)
    return Manifest(version, _field(data, "arch", str), _field(data, "kernel_release", str), args, parts)


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in tar.getmembers() if m.isfile()}


@contextmanager
def open_bundle(path: Path) -> Iterator[tuple[Manifest, tarfile.TarFile, dict[str, tarfile.TarInfo]]]:
    """Open a bundle and parse its manifest (not yet verified: see :func:`verify`)."""
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed in the finally below
    except FileNotFoundError:
        raise BundleError(f"the bundle {path} does not exist") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"the file is not an upgrade bundle (not a tar archive: {exc})") from None
    try:
        try:
            members = _members(tar)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"the upgrade bundle is damaged (truncated or corrupt tar: {exc})") from None
        if MANIFEST not in members:
            raise BundleError(f"the file is not an upgrade bundle: it has no {MANIFEST}")
        f = tar.extractfile(members[MANIFEST])
        assert f is not None
        yield parse_manifest(f.read(1 << 20)), tar, members
    finally:
        tar.close()


def _hash(stream: IO[bytes], size: int, progress: Callable[[int], None]) -> tuple[str, bytes, int]:
    h = hashlib.sha256()
    head = b""
    done = 0
    while chunk := stream.read(CHUNK):
        if not head:
            head = chunk[:4096]
        h.update(chunk)
        done += len(chunk)
        progress(len(chunk))
    return h.hexdigest(), head, done


def verify(
    path: Path, arch: str | None = None, progress: Callable[[int], None] = lambda _n: None
) -> Manifest:
    """Check the whole bundle: the manifest, the architecture, each part's size, sha256 and kind.

    ``arch`` defaults to this machine's (``os.uname().machine``). Reads everything, writes nothing.
    """
    want = arch or os.uname().machine
    with open_bundle(path) as (manifest, tar, members):
        if manifest.arch != want:
            raise BundleError(
                f"the bundle is for {manifest.arch}, but this node is {want}: use a bundle baked for {want}"
            )
        for part in manifest.parts.values():
            member = members.get(part.filename)
            if member is None:
                raise BundleError(f"the upgrade bundle has no {part.filename}: it is incomplete")
            if member.size != part.size:
                raise BundleError(
                    f"the bundle's {part.filename} is {member.size} bytes, its manifest says {part.size}: "
                    "the file is damaged"
                )
            stream = tar.extractfile(member)
            assert stream is not None
            try:
                digest, head, done = _hash(stream, part.size, progress)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise BundleError(
                    f"the bundle's {part.filename} cannot be read (the file is truncated: {exc})"
                ) from None
            if done != part.size:
                raise BundleError(f"the bundle's {part.filename} is truncated: the file is damaged")
            if digest != part.sha256:
                raise BundleError(
                    f"the bundle's {part.filename} does not match its sha256 in the manifest: the file is damaged"
                )
            _check_kind(part, head, want)
    return manifest


def _check_kind(part: Part, head: bytes, arch: str) -> None:
    """The parts are what they claim: a squashfs, a kernel this machine boots."""
    if part.name == "root" and head[:4] != SQUASHFS_MAGIC:
        raise BundleError("the bundle's root.sqsh is not a squashfs image")
    if part.name == "kernel" and arch in ("x86_64", "i686") and head[0x202:0x206] != BZIMAGE_MAGIC:
        raise BundleError(f"the bundle's kernel is not an x86 bzImage, so this {arch} node cannot boot it")


def copy_part(
    path: Path, part: Part, write: Callable[[bytes], None], progress: Callable[[int], None] = lambda _n: None
) -> str:
    """Stream one part out of the bundle into ``write``; returns the sha256 of what was written."""
    with open_bundle(path) as (_manifest, tar, members):
        stream = tar.extractfile(members[part.filename])
        assert stream is not None
        h = hashlib.sha256()
        while chunk := stream.read(CHUNK):
            h.update(chunk)
            write(chunk)
            progress(len(chunk))
    return h.hexdigest()


def create(out: IO[bytes], manifest: Manifest, files: dict[str, Path], mtime: int) -> None:
    """Write a bundle (used by the bakery and the tests): fixed order, owner and times, so reproducible."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entries = [(MANIFEST, None)] + [(manifest.parts[name].filename, files[name]) for name in PARTS]
        for name, src in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = mtime, 0o644, 0, 0, "", ""
            if src is None:
                data = manifest.to_json()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.size = src.stat().st_size
                with open(src, "rb") as f:
                    tar.addfile(info, f)


def describe(path: Path) -> Manifest:
    """The manifest of a bundle (unverified), e.g. for a listing."""
    with open_bundle(path) as (manifest, _tar, _members):
        return manifest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest_for(
    version: str, arch: str, kernel_release: str, kernel_args: str, files: dict[str, Path]
) -> Manifest:
    """The manifest describing ``files`` (kernel, initramfs, root)."""
    parts = {
        name: Part(name, FILENAMES[name], files[name].stat().st_size, file_sha256(files[name]))
        for name in PARTS
    }
    return Manifest(version, arch, kernel_release, kernel_args, parts)
