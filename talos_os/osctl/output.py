"""How osctl prints node answers: aligned tables for people, JSON or YAML for scripts, node-prefixed lines."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

import yaml
from google.protobuf.message import Message

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


def iso_time(epoch: float) -> str | None:
    """``2026-12-01T08:15:55.123456Z`` for a unix time; None for 0 (never set)."""
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, three spaces apart, no trailing blanks."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def to_yaml(value: object) -> str:
    """YAML in the order given (records read like the table's columns)."""
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=1 << 20).rstrip("\n")


def render(output: str, headers: Sequence[str], rows: Sequence[Sequence[object]], records: object) -> str:
    """The table for ``table``, else ``records`` as JSON or YAML."""
    if output == "json":
        return to_json(records)
    if output == "yaml":
        return to_yaml(records)
    return table(headers, rows)


def size(n: float) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 3.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """An age like ``45s``, ``3m12s``, ``2h5m``, ``4d3h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


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
