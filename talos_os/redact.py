"""Secrets out of text that is about to be logged or shown: keys, certificates' keys, tokens.

Readers may read the kernel log (``osctl dmesg``) and service logs (``osctl logs``), and config
errors are printed on the console: none of these may carry key material or a token, whoever wrote
the line. :func:`redact` removes what looks like a secret whatever it belongs to (PEM blocks, the
base64 of a PEM block, bootstrap tokens, ``key: value`` pairs with a secret-sounding name, long
base64 runs) and, exactly, any value it is told is secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MARK = "<redacted>"
#: Values shorter than this are not redacted by exact match (they would blank ordinary words).
MIN_SECRET = 8

_PATTERNS = (
    # A PEM block, or the start of one cut off (a truncated message).
    re.compile(r"-----BEGIN [A-Z0-9 ]+-----[\s\S]*?(?:-----END [A-Z0-9 ]+-----|\Z)"),
    # The base64 of a PEM block: "-----B" encodes as "LS0tLS1C".
    re.compile(r"LS0tLS1[A-Za-z0-9+/=]*"),
    # A Kubernetes bootstrap token (id.secret).
    re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b"),
    # name: value / name=value where the name says secret (key, token, password, secret, credentials).
    re.compile(
        r"(?i)(?P<name>[\w.-]*(?:key|token|secret|passw(?:or)?d|credential)s?[\"']?\s*[:=]\s*)"
        r"(?P<value>(?!-----)[^\s,;}\]]{4,})"
    ),
    # A long run of base64 with the characters hex and words lack (+, /, =): key material. Random
    # base64 of that length has upper and lower case letters (a run without both: odds below 1e-7);
    # URL and file paths ("6443/apis/apps/v1/namespaces/kube-system") mostly lack capitals: kept.
    re.compile(
        r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[+/])(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[a-z])"
        r"[A-Za-z0-9+/]{32,}={0,2}"
    ),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret-looking part, and each of ``secrets``, replaced by ``<redacted>``."""
    for value in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(value, MARK)
    for pattern in _PATTERNS:
        if "name" in pattern.groupindex:
            text = pattern.sub(lambda m: m.group("name") + MARK, text)
        else:
            text = pattern.sub(MARK, text)
    return text


class LineRedactor:
    """:func:`redact` for text that arrives line by line: a PEM block's body lines are redacted too.

    Not thread-safe; give each stream its own.
    """

    def __init__(self) -> None:
        self._in_pem = False

    def __call__(self, line: str) -> str:
        if self._in_pem:
            if _PEM_END.search(line):
                self._in_pem = False
                return MARK + _PEM_END.split(line, 1)[1]
            return MARK
        begin = _PEM_BEGIN.search(line)
        if begin is not None and not _PEM_END.search(line, begin.end()):
            self._in_pem = True
            return redact(line[: begin.start()]) + MARK
        return redact(line)


_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]+-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]+-----")
