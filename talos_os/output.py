"""How the CLIs print results, shared by osctl and talos-bake: ``-o table|json|yaml``.

``table`` is the text for people (aligned columns, or the lines a command always printed); ``json``
and ``yaml`` print one document on stdout for scripts, with paths as strings and times in ISO 8601
(UTC). Progress and warnings go to stderr, so ``talos-bake raw -o json | jq`` reads only the result.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence, Set
from datetime import UTC, date, datetime
from pathlib import PurePath
from typing import Any, TypeVar

import click
import yaml

FORMATS = ("table", "json", "yaml")
F = TypeVar("F", bound=Callable[..., Any])


def output_option(default: str | None = "table") -> Callable[[F], F]:
    """A command's ``-o/--output table|json|yaml``, declared here only. ``default`` None leaves the
    choice to an enclosing group (osctl's root ``-o``); ``table`` otherwise."""
    if default is None:
        return click.option(
            "-o", "--output", type=click.Choice(FORMATS), default=None, help="Output format [default: table]."
        )
    return click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default=default,
        show_default=True,
        help="Output format: table is text for people; json and yaml print one document on stdout.",
    )


def iso_time(epoch: float) -> str | None:
    """``2026-12-01T08:15:55.123456Z`` for a unix time; None for 0 (never set)."""
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def jsonable(value: object) -> Any:
    """``value`` as JSON/YAML scalars, lists and string-keyed mappings: paths become strings, datetimes
    ISO 8601, tuples and sets lists, dataclasses mappings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime):
        text = value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
        return text.replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence | Set) and not isinstance(value, bytes | bytearray):
        return [jsonable(v) for v in value]  # lists, tuples, sets, protobuf repeated fields
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, three spaces apart, no trailing blanks."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def to_json(value: object) -> str:
    return json.dumps(jsonable(value), indent=2, sort_keys=False)


def to_yaml(value: object) -> str:
    """YAML in the order given (records read like the table's columns)."""
    return yaml.safe_dump(jsonable(value), sort_keys=False, default_flow_style=False, width=1 << 20).rstrip(
        "\n"
    )


def render(output: str, headers: Sequence[str], rows: Sequence[Sequence[object]], records: object) -> str:
    """The table for ``table``, else ``records`` as JSON or YAML."""
    if output in ("json", "yaml"):
        return document(output, records, "")
    return table(headers, rows)


def document(output: str, record: object, text: str) -> str:
    """``text`` (what people read) for ``table``, else ``record`` as one JSON or YAML document."""
    if output == "json":
        return to_json(record)
    if output == "yaml":
        return to_yaml(record)
    return text


def echo(output: str, record: object, text: str | Sequence[str]) -> None:
    """Print the result on stdout: ``text`` (a string or lines) for ``table``, else ``record``."""
    lines = text if isinstance(text, str) else "\n".join(text)
    click.echo(document(output, record, lines))


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
