"""A progress bar for uploads, on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

WIDTH = 30


class Bar:
    """Thread-safe: S3 transfer callbacks arrive from several threads."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "",
        *,
        scale: int = 1,
        quiet: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        """``total`` units of work, shown divided by ``scale`` (bytes shown as MiB: ``scale=2**20``)."""
        self.label, self.total, self.unit, self.scale, self.quiet = label, max(1, total), unit, scale, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_decile = -1
        self._last_draw = 0.0
        self._last_line = ""

    def advance(self, n: int = 1, detail: str = "") -> None:
        """Count ``n`` more units done and redraw if it is time to."""
        with self._lock:
            self.done = min(self.total, self.done + n)
            self._draw(detail, final=False)

    def finish(self, detail: str = "") -> None:
        with self._lock:
            self._draw(detail, final=True)

    def _draw(self, detail: str, *, final: bool) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        fraction = self.done / self.total
        decile = int(fraction * 10)
        if self.tty:
            if not final and now - self._last_draw < 0.1:
                return
        elif not final and decile == self._last_decile:
            return
        self._last_draw, self._last_decile = now, decile
        filled = int(fraction * WIDTH)
        line = f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {fraction:4.0%} "
        line += f"{self.done // self.scale}/{self.total // self.scale}{self.unit}"
        if detail:
            line += f"  {detail}"
        if self.tty:
            self.stream.write(f"\r\x1b[K{line}" + ("\n" if final else ""))
        elif line != self._last_line:
            self.stream.write(line + "\n")
        self._last_line = line
        self.stream.flush()
