"""Extract Debian packages without dpkg and without root, onto a merged-/usr tree.

Setuid/setgid bits are dropped, device nodes skipped, and paths under /bin, /sbin, /lib and
/lib64 are mapped into /usr so the tree has one copy of everything.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

from bakery.errors import BakeError
from bakery.tools import which

MERGED = ("bin", "sbin", "lib", "lib64")


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an ar archive (a .deb is one)."""
    if not data.startswith(b"!<arch>\n"):
        raise BakeError("not a Debian package (no ar header)")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def data_tar(deb: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb, opened for reading."""
    members = ar_members(deb.read_bytes())
    for name, blob in members.items():
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                blob = subprocess.run(
                    [which("zstd"), "-dc"], input=blob, capture_output=True, check=True
                ).stdout
                return tarfile.open(fileobj=io.BytesIO(blob), mode="r:")
            return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    raise BakeError(f"{deb.name} has no data.tar member")


def usr_merged(path: str) -> str:
    """``./lib/x86_64-linux-gnu/libc.so.6`` -> ``usr/lib/x86_64-linux-gnu/libc.so.6``."""
    parts = PurePosixPath(path.removeprefix("./")).parts
    if not parts:
        return ""
    if parts[0] in MERGED:
        parts = ("usr", *parts)
    return str(PurePosixPath(*parts))


def make_merged_root(root: Path) -> None:
    """Create the merged-/usr skeleton: /bin -> usr/bin and friends."""
    for d in MERGED:
        (root / "usr" / d).mkdir(parents=True, exist_ok=True)
        link = root / d
        if not link.is_symlink():
            link.symlink_to(f"usr/{d}")


def extract(deb: Path, root: Path) -> list[str]:
    """Extract ``deb`` into ``root``; returns the paths written (relative to root)."""
    written: list[str] = []
    with data_tar(deb) as tar:
        for m in tar.getmembers():
            rel = usr_merged(m.name)
            if not rel or ".." in PurePosixPath(rel).parts or rel.startswith("/"):
                continue
            dest = root / rel
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.exists():
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                else:
                    dest.unlink()
            if m.issym():
                os.symlink(m.linkname, dest)
            elif m.islnk():
                shutil.copy2(root / usr_merged(m.linkname), dest, follow_symlinks=False)
            elif m.isfile():
                src = tar.extractfile(m)
                assert src is not None
                dest.write_bytes(src.read())
                os.chmod(dest, m.mode & 0o777)  # never setuid/setgid
            else:
                continue  # device nodes and fifos have no place in the image
            written.append(rel)
    return written
