"""A service's output: the last lines in memory for followers, and a rotated log file on disk.

Separate from the supervisor because osd and the control socket read it on their own terms
(cursors, pages, waiting for more) while the supervisor only appends.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

from talos_os.redact import LineRedactor

log = logging.getLogger(__name__)


class LogBuffer:
    """The last lines of a service's output in memory, plus a size-bounded log file with rotation.

    Lines are numbered from 0; a cursor is the number of the next line to read, so a follower
    calls ``read_since(cursor)`` and ``wait_for_more(cursor, timeout)`` in a loop. A follower too
    slow for the ring just misses the evicted lines (the file keeps more).
    """

    def __init__(
        self,
        *,
        max_lines: int = 1000,
        max_bytes: int = 256 * 1024,
        path: Path | None = None,
        file_max_bytes: int = 1024 * 1024,
        backups: int = 1,
    ) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max_bytes
        self.path = path
        self.file_max_bytes = file_max_bytes
        self.backups = backups
        self.file_error: str | None = None
        self._ring: deque[str] = deque()
        self._ring_bytes = 0
        self._first = 0  # number of the oldest line in the ring
        self._next = 0  # number the next appended line will get
        self._closed = False
        self._cond = threading.Condition()
        self._file: BinaryIO | None = None
        self._file_size = 0
        self._redact = LineRedactor()

    @property
    def cursor(self) -> int:
        """The cursor of the next line: a follower that starts here sees only new lines."""
        with self._cond:
            return self._next

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (the supervisor shut down): no new lines will come."""
        with self._cond:
            return self._closed

    def append(self, line: str) -> None:
        with self._cond:
            line = self._redact(line)  # readers may read service logs: no key or token gets in
            self._ring.append(line)
            self._ring_bytes += len(line)
            self._next += 1
            while len(self._ring) > 1 and (
                len(self._ring) > self.max_lines or self._ring_bytes > self.max_bytes
            ):
                self._ring_bytes -= len(self._ring.popleft())
                self._first += 1
            self._write_file(line)
            self._cond.notify_all()

    def lines(self) -> list[str]:
        """Everything still in the ring, oldest first."""
        with self._cond:
            return list(self._ring)

    def read_since(self, cursor: int) -> tuple[list[str], int]:
        """Lines from ``cursor`` on (or from the oldest kept line) and the cursor after them."""
        _start, lines, end = self.page(cursor)
        return lines, end

    def page(self, cursor: int, max_lines: int | None = None) -> tuple[int, list[str], int]:
        """At most ``max_lines`` (default: all) lines from ``cursor`` (or the oldest kept line).

        Returns the number of the first line returned, the lines, and the cursor of the next line
        the buffer will get: a reader that pages through a big ring copies only one page each time.
        """
        with self._cond:
            start = min(max(cursor, self._first), self._next)
            offset = start - self._first
            stop = None if max_lines is None else offset + max(0, max_lines)
            return start, list(itertools.islice(self._ring, offset, stop)), self._next

    def wait_for_more(self, cursor: int, timeout: float | None) -> bool:
        """Block until a line past ``cursor`` exists (True) or the timeout/close comes (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._next > cursor or self._closed, timeout)
            return self._next > cursor

    def close(self) -> None:
        """Wake followers and close the file (appends after this still reach the ring)."""
        with self._cond:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
            self._cond.notify_all()

    def _write_file(self, line: str) -> None:
        if self.path is None or self._closed or self.file_error is not None:
            return
        data = (line + "\n").encode("utf-8", "replace")
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across appends
                self._file_size = self._file.tell()
            if self._file_size > 0 and self._file_size + len(data) > self.file_max_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            self._file_size += len(data)
        except OSError as exc:
            # A full or read-only /var must not take the service (or init) down: keep the ring only.
            self.file_error = f"{self.path}: {exc}"
            log.warning("log file disabled: %s", self.file_error)
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def _rotate(self) -> None:
        assert self.path is not None and self._file is not None
        self._file.close()
        self._file = None
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "wb")  # noqa: SIM115 - kept open across appends
        self._file_size = 0
