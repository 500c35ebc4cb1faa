"""``osctl cp``'s side of CopyOut: the tar stream read from gRPC chunks, members made safe to extract,
and the node's note of what it left out."""

from __future__ import annotations

import copy
import io
import json
import os
import tarfile
from collections.abc import Iterator
from typing import Any

from talos_os import api
from talos_os.api.gen import node_pb2 as pb


class ChunkReader(io.RawIOBase):
    """A readable file over a stream of Data chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[pb.Data]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks).bytes
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """``member`` made safe to extract into ``dest``, or None to skip it.

    Only files, directories and links; nothing that lands (or links) outside ``dest``; no absolute
    symlinks; no setuid/setgid/sticky bits; owned by whoever runs osctl. (tarfile's ``data`` filter
    does much the same, but only from Python 3.11.4; Debian 12 has 3.11.2.)
    """
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return None
    root = os.path.realpath(dest)
    target = os.path.realpath(os.path.join(root, member.name))
    if not inside(target, root):
        return None
    if member.issym():
        link = os.path.realpath(os.path.join(os.path.dirname(target), member.linkname))
        if os.path.isabs(member.linkname) or not inside(link, root):
            return None
    if member.islnk() and not inside(os.path.realpath(os.path.join(root, member.linkname)), root):
        return None
    safe = copy.copy(member)
    safe.mode = member.mode & 0o777
    safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
    return safe


EXTRACT_KW: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


def skipped_note(trailer: dict[str, Any]) -> str:
    """What the node left out of a copy (entries that vanished or could not be read), or ""."""
    count = trailer.get(api.SKIPPED_COUNT)
    if not count:
        return ""
    try:
        paths = [str(p) for p in json.loads(trailer.get(api.SKIPPED_PATHS) or "[]")]
    except ValueError:
        paths = []
    more = int(count) - len(paths) if str(count).isdigit() else 0
    listed = ", ".join(paths) + (f" and {more} more" if more > 0 else "")
    return f"{count} entries changed or vanished during the copy and were left out or padded: {listed}"
