"""When a process started, in seconds since the kernel booted: osd prints its start against it, so
``make bench`` can place it on the boot's timeline. (Not for PID 1: its start is the kernel
thread's, long before /init runs.)"""

from __future__ import annotations

import os
from pathlib import Path


def process_start(stat: Path = Path("/proc/self/stat")) -> float | None:
    """Seconds after boot at which this process started (field 22 of /proc/self/stat)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
