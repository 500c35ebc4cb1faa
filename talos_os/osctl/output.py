"""How osctl prints node answers: protobuf messages as plain values, node-prefixed lines. The formats
themselves (tables, JSON, YAML, sizes, ages) are :mod:`talos_os.output`, shared with talos-bake."""

from __future__ import annotations

import threading
from typing import Any, BinaryIO

from google.protobuf.message import Message

from talos_os.output import duration, iso_time, render, size, table, to_json, to_yaml

__all__ = [
    "TIME_FIELDS",
    "LinePrinter",
    "duration",
    "iso_time",
    "plain",
    "render",
    "size",
    "table",
    "to_json",
    "to_yaml",
]

# Fields holding a unix time as a double; shown as ISO 8601 (UTC), 0 as null.
TIME_FIELDS = frozenset({"since", "time"})


def plain(msg: Message) -> dict[str, Any]:
    """A message as plain values for JSON/YAML: 64-bit integers stay numbers (unlike protobuf's JSON),
    times are ISO 8601, and a ``has_X`` presence flag becomes X itself being null."""
    names = {fd.name for fd in msg.DESCRIPTOR.fields}
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        if fd.name.startswith("has_") and fd.name[4:] in names:
            continue
        value = getattr(msg, fd.name)
        if f"has_{fd.name}" in names and not getattr(msg, f"has_{fd.name}"):
            out[fd.name] = None
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = dict(value)
        elif fd.is_repeated:
            out[fd.name] = [plain(v) if fd.message_type is not None else v for v in value]
        elif fd.message_type is not None:
            out[fd.name] = plain(value)
        elif fd.name in TIME_FIELDS:
            out[fd.name] = iso_time(value)
        else:
            out[fd.name] = value
    return out


class LinePrinter:
    """Writes byte streams from several nodes to one output, whole lines only, each prefixed by its node."""

    def __init__(self, out: BinaryIO, prefix: bool) -> None:
        self.out = out
        self.prefix = prefix
        self._lock = threading.Lock()
        self._partial: dict[str, bytes] = {}

    def write(self, node: str, data: bytes) -> None:
        if not self.prefix:
            with self._lock:
                self.out.write(data)
                self.out.flush()
            return
        text = self._partial.pop(node, b"") + data
        lines = text.split(b"\n")
        rest = lines.pop()
        if rest:
            self._partial[node] = rest
        if lines:
            head = node.encode() + b": "
            with self._lock:
                self.out.write(b"".join(head + line + b"\n" for line in lines))
                self.out.flush()

    def close(self, node: str) -> None:
        """Flush a node's unterminated last line."""
        rest = self._partial.pop(node, b"")
        if rest:
            self.write(node, rest + b"\n")
