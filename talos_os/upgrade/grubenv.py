"""GRUB's environment block (``/boot/grub/grubenv``): read, render, and rewrite in place.

The format GRUB's ``load_env``/``save_env`` use: exactly 1024 bytes, the header line
``# GRUB Environment Block``, then ``key=value`` lines, padded with ``#``. GRUB's ``save_env`` writes
the file's blocks directly (it cannot allocate), so the node never changes the file's size: it
overwrites the same 1024 bytes and fsyncs. One sector-sized write is what makes a power cut safe:
the block holds either the old or the new state.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

SIZE = 1024
HEADER = "# GRUB Environment Block\n"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class GrubEnvError(Exception):
    """The block is not a GRUB environment block, or the state does not fit in one."""


def parse(data: bytes) -> dict[str, str]:
    """The variables of a block (GRUB's escapes ``\\\\`` and ``\\n`` are undone)."""
    text = data.decode("utf-8", "replace")
    if not text.startswith(HEADER):
        raise GrubEnvError("not a GRUB environment block (its header is missing)")
    env: dict[str, str] = {}
    for line in text[len(HEADER) :].split("\n"):
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        env[key] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return env


def render(env: Mapping[str, str]) -> bytes:
    """A 1024-byte block holding ``env`` (empty values are left out, as GRUB's unset does)."""
    body = HEADER
    for key, value in env.items():
        if not _KEY.match(key):
            raise GrubEnvError(f"{key!r} is not a GRUB variable name")
        if value == "":
            continue
        body += f"{key}={value.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}\n"
    data = body.encode()
    if len(data) > SIZE:
        raise GrubEnvError(f"the GRUB environment needs {len(data)} bytes: more than the block's {SIZE}")
    return data + b"#" * (SIZE - len(data))


def read(path: Path) -> dict[str, str]:
    """The variables in the block at ``path``."""
    return parse(path.read_bytes())


def write(path: Path, env: Mapping[str, str]) -> None:
    """Overwrite the block at ``path`` in place with ``env`` (same size, same blocks), then fsync.

    A missing file is created at full size (the bakery makes one; an older image has none).
    """
    data = render(env)
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        fd = os.open(path, flags | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size not in (0, SIZE):
            raise GrubEnvError(f"{path} is {size} bytes, not a {SIZE}-byte GRUB environment block")
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
