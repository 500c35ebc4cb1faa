"""Errors raised for a bad machine config: every problem is an issue with a YAML path and a position."""

import datetime
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import ErrorDetails, PydanticCustomError

#: pydantic error type used for every message written by this package (ctx["message"] is the text).
CUSTOM_ERROR_TYPE = "talos_config"

#: Marker pydantic appends to a location when a mapping *key* (not its value) is invalid.
KEY_MARKER = "[key]"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_SHOWN = 60


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config, located by YAML path (``machine.network.interfaces[0].cidr``) and position."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.line is not None:
            where = f"line {self.line}" + (f", column {self.column}" if self.column is not None else "")
        if self.path and where:
            return f"{self.path} ({where}): {self.message}"
        if self.path or where:
            return f"{self.path or where}: {self.message}"
        return self.message


class ConfigError(Exception):
    """The config cannot be used; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: Iterable[ConfigIssue], *, source: str | None = None) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        self.source = source
        super().__init__(self.issues)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (self.issues, self.source))

    def __str__(self) -> str:
        if len(self.issues) == 1 and not self.issues[0].path and self.issues[0].line is None:
            # A whole-document problem (unreadable file, empty document) reads best as one sentence.
            return self.issues[0].message
        count = len(self.issues)
        subject = f"config {self.source}" if self.source else "config"
        header = f"{subject} is invalid ({count} error{'' if count == 1 else 's'}):"
        return "\n".join([header, *(f"  {issue}" for issue in self.issues)])


def _rebuild_error(issues: list[ConfigIssue], source: str | None) -> ConfigError:
    return ConfigError(issues, source=source)


def invalid(message: str, kind: str = CUSTOM_ERROR_TYPE) -> PydanticCustomError:
    """A pydantic error carrying our finished message, so validators can explain exactly what was wrong.

    ``kind`` keeps the original pydantic error type when a built-in error is reworded.
    """
    return PydanticCustomError(CUSTOM_ERROR_TYPE, "{message}", {"message": message, "kind": kind})


def describe(value: object) -> str:
    """Name a YAML value for a "got ..." clause, short enough for one line."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        if "\n" in value.rstrip("\n"):  # a block that swallowed what follows it: keys, maybe secrets
            return f"a multi-line string of {len(value)} characters (is a key indented wrongly?)"
        if len(value) > _MAX_SHOWN:
            return f"{value[:_MAX_SHOWN]!r}... ({len(value)} characters)"
        return repr(value)
    if isinstance(value, bytes | bytearray):
        return "binary data"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, set | frozenset):
        return "a set"
    if isinstance(value, datetime.datetime | datetime.date):
        return f"date {value.isoformat()} (quote it to make it a string)"
    return f"a value of type {type(value).__name__}"


def describe_secret(value: object) -> str:
    """Like :func:`describe`, but never echoes the text of a string that may hold key material."""
    if isinstance(value, str):
        return f"a {len(value)}-character string"
    return describe(value)


def format_path(loc: Sequence[int | str]) -> str:
    """Render a location as ``machine.network.interfaces[0].cidr`` (odd keys as ``env["A-B"]``)."""
    out = ""
    for part in loc:
        if part == KEY_MARKER:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def message_for(error: ErrorDetails, allowed_keys: Sequence[str] | None = None) -> str:
    """Turn a pydantic error into "expected X, got Y" wording (our own messages pass through untouched)."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    got = error.get("input")
    loc = error["loc"]
    if kind == CUSTOM_ERROR_TYPE:
        return str(ctx.get("message", error["msg"]))
    if kind == "missing":
        key = loc[-1] if loc else "?"
        return f"missing required key {key!r}"
    if kind == "extra_forbidden":
        return _unknown_key_message(str(loc[-1]) if loc else "?", allowed_keys)
    expected = _EXPECTED_TYPE.get(kind)
    if expected is not None:
        return f"expected {expected}, got {describe(got)}"
    if kind in ("enum", "literal_error"):
        return f"expected one of {ctx.get('expected', '?')}, got {describe(got)}"
    if kind == "greater_than_equal":
        return f"expected a number of at least {ctx.get('ge')}, got {describe(got)}"
    if kind == "less_than_equal":
        return f"expected a number of at most {ctx.get('le')}, got {describe(got)}"
    if kind == "too_short":
        least = ctx.get("min_length")
        return f"expected at least {least} item{'' if least == 1 else 's'}, got {describe(got)}"
    if kind == "too_long":
        most = ctx.get("max_length")
        return f"expected at most {most} item{'' if most == 1 else 's'}, got {describe(got)}"
    msg = str(error["msg"])
    if kind in ("value_error", "assertion_error"):
        msg = msg.split(", ", 1)[-1]
    return f"{msg[:1].lower()}{msg[1:]}, got {describe(got)}"


_EXPECTED_TYPE = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
}


def _unknown_key_message(key: str, allowed: Sequence[str] | None) -> str:
    if not allowed:
        return f"unknown key {key!r}"
    lowered = {a.lower(): a for a in allowed}
    guess = lowered.get(key.lower()) or next(
        iter(difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)), None
    )
    if guess is not None:
        return f"unknown key {key!r}, did you mean {guess!r}?"
    return f"unknown key {key!r}, expected one of: {', '.join(allowed)}"
