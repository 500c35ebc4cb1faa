"""Kernel command line parsing.

Words with a dot (``talos.config=...``) are taken by the kernel as module parameters and never
reach init as arguments or environment, so init reads ``/proc/cmdline`` and parses it here.
The splitting follows the kernel's own ``next_arg()`` (lib/cmdline.c): whitespace separates
words unless inside double quotes; a quote opening the word or the value is dropped together
with the matching quote closing the word; everything after a bare ``--`` belongs to init.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC_CMDLINE = Path("/proc/cmdline")


@dataclass(frozen=True)
class Cmdline:
    """Ordered ``(key, value)`` pairs; ``value`` is None for a bare flag such as ``quiet``."""

    params: tuple[tuple[str, str | None], ...] = ()
    init_args: tuple[str, ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value given for ``key`` (the kernel lets a later word override an earlier one)."""
        for k, v in reversed(self.params):
            if k == key:
                return v if v is not None else default
        return default

    def get_all(self, key: str) -> list[str | None]:
        """Every value given for ``key``, in order (``console=`` may appear several times)."""
        return [v for k, v in self.params if k == key]

    def has(self, key: str) -> bool:
        """True if ``key`` appears at all, as a flag or with a value."""
        return any(k == key for k, _ in self.params)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.has(key)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        return iter(self.params)

    def as_dict(self) -> dict[str, str | None]:
        """Last value wins, insertion order of first appearance."""
        out: dict[str, str | None] = {}
        for k, v in self.params:
            out[k] = v
        return out


def _next_word(text: str, pos: int) -> tuple[str, int]:
    """Return the raw word starting at ``pos`` (quotes still in it) and the position after it."""
    in_quote = False
    i = pos
    while i < len(text):
        c = text[i]
        if c.isspace() and not in_quote:
            break
        if c == '"':
            in_quote = not in_quote
        i += 1
    return text[pos:i], i


def _split_word(word: str) -> tuple[str, str | None]:
    """Apply the kernel's quote stripping to one word and split it at the first ``=``."""
    quoted = word.startswith('"')
    if quoted:
        word = word[1:]
    key, eq, value = word.partition("=")
    if not eq:
        if quoted and key.endswith('"'):
            key = key[:-1]
        return key, None
    if value.startswith('"'):
        value = value[1:]
        if value.endswith('"'):
            value = value[:-1]
    elif quoted and value.endswith('"'):
        value = value[:-1]
    return key, value


def parse(text: str) -> Cmdline:
    """Parse command-line text (as read from ``/proc/cmdline``) into a :class:`Cmdline`."""
    params: list[tuple[str, str | None]] = []
    init_args: list[str] = []
    pos = 0
    seen_dashdash = False
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        raw, pos = _next_word(text, pos)
        if seen_dashdash:
            init_args.append(raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw)
            continue
        if raw == "--":
            seen_dashdash = True
            continue
        key, value = _split_word(raw)
        if key:
            params.append((key, value))
    return Cmdline(tuple(params), tuple(init_args))


def read(path: Path | str = PROC_CMDLINE) -> Cmdline:
    """Read and parse the running kernel's command line (``path`` is a parameter for tests)."""
    return parse(Path(path).read_text(encoding="utf-8", errors="replace"))
