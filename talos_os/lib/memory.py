"""A process's resident memory as the kernel counts it: RSS, and PSS, where each page shared with
other processes (the interpreter, its libraries, the same squashfs files) counts as its share.

RSS alone counts those shared pages once per process, so the init's and osd's RSS added together
count the Python binary and every library both load twice; their PSS added together counts them once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FIELD = re.compile(r"^(Rss|Pss):\s+(\d+) kB", re.MULTILINE)
# What describe() writes, as ``make bench`` reads it back from the init's ready line (group 1: PSS).
DESCRIBED = re.compile(r"resident memory \d+ KiB \(proportional (\d+) KiB\)")


@dataclass(frozen=True)
class Resident:
    """Kibibytes resident: all pages (rss) and the proportional share of shared ones (pss)."""

    rss_kib: int
    pss_kib: int


def parse(smaps_rollup: str) -> Resident:
    """Read ``/proc/<pid>/smaps_rollup``'s totals; a text without them is an error, not zeros."""
    got = dict(_FIELD.findall(smaps_rollup))
    if "Rss" not in got or "Pss" not in got:
        raise ValueError("not a /proc/<pid>/smaps_rollup text: no Rss or Pss line")
    return Resident(int(got["Rss"]), int(got["Pss"]))


def own(proc: Path = Path("/proc/self")) -> Resident:
    """This process's resident memory (a process may always read its own smaps_rollup)."""
    return parse((proc / "smaps_rollup").read_text())


def describe(who: str) -> str:
    """``<who> resident memory N KiB (proportional M KiB)`` for a log line; a kernel without
    smaps_rollup costs the figures, never the caller (PID 1 logs this)."""
    try:
        mem = own()
    except (OSError, ValueError) as exc:
        return f"{who} resident memory unknown ({exc})"
    return f"{who} resident memory {mem.rss_kib} KiB (proportional {mem.pss_kib} KiB)"
