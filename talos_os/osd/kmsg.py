"""The kernel log for ``osctl dmesg``: /dev/kmsg records formatted like dmesg(1).

/dev/kmsg hands out one record per read (``pri,seq,usec,flags;message`` then `` KEY=value``
continuation lines) and EAGAIN once the reader has caught up; EPIPE means the ring overwrote
records before we read them, and reading simply goes on. The path is a parameter so tests (and
hosts whose /dev/kmsg is closed) can use a file or a fifo: lines that are not kmsg records pass
through unchanged, end of file counts as "caught up", and following a file polls it like ``tail -f``.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_KMSG = Path("/dev/kmsg")
CHUNK = 64 * 1024
_RECORD = re.compile(rb"^(\d+),(\d+),(\d+),[^;]*;(.*)$")


def format_line(line: bytes) -> bytes | None:
    """One kmsg line as dmesg shows it; None for continuation (`` KEY=value``) lines."""
    if line.startswith(b" "):
        return None
    m = _RECORD.match(line)
    if m is None:
        return line
    usec = int(m.group(3))
    return b"[%5d.%06d] %s" % (usec // 1_000_000, usec % 1_000_000, m.group(4))


def read(
    path: Path | str = DEFAULT_KMSG,
    *,
    follow: bool = False,
    tail: int | None = None,
    active: Callable[[], bool] = lambda: True,
    poll: float = 0.5,
) -> Iterator[bytes]:
    """Chunks of formatted lines (each ending in a newline), up to :data:`CHUNK` bytes each.

    Without ``follow`` it ends once the reader has caught up; with it, it keeps going while
    ``active()`` (checked at least every ``poll`` seconds). ``tail`` keeps only the last lines
    of what is there at the start.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        backlog: deque[bytes] | None = deque(maxlen=tail) if tail is not None else None
        batch: list[bytes] = []
        size = 0
        partial = b""
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                data = None  # caught up (kmsg, or a fifo whose writer is quiet)
            except BrokenPipeError:
                continue  # kmsg overwrote records we had not read yet: carry on with the next
            if data:
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                for raw in lines:
                    shown = format_line(raw)
                    if shown is None:
                        continue
                    if backlog is not None:
                        backlog.append(shown)
                        continue
                    batch.append(shown)
                    size += len(shown) + 1
                if size >= CHUNK:
                    yield b"\n".join(batch) + b"\n"
                    batch, size = [], 0
                continue
            # Caught up: what was there at the start is complete (an unterminated last line too,
            # unless following: then the rest of it may still come).
            if partial and not follow:
                shown = format_line(partial)
                partial = b""
                if shown is not None:
                    (backlog if backlog is not None else batch).append(shown)
            if backlog is not None:
                batch.extend(backlog)
                backlog = None
            if batch:
                yield b"\n".join(batch) + b"\n"
                batch, size = [], 0
            if not follow or not active():
                return
            if data is None:
                with contextlib.suppress(InterruptedError):
                    select.select([fd], [], [], poll)
            else:
                time.sleep(poll)  # end of a file, or a fifo without a writer: poll like tail -f
    finally:
        os.close(fd)
