"""The init's voice: ``[talos]`` lines on the serial console and in the kernel log.

Operators have no shell, so everything the boot does (phases, retries, config errors) is told here;
``osctl dmesg`` reads the kernel-log copy later.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TextIO

from talos_os.redact import redact


class Console:
    """Writes ``[talos]`` lines to the console and the kernel log; safe from several threads."""

    def __init__(self, console: str = "/dev/console", kmsg: str = "/dev/kmsg") -> None:
        self._paths = (console, kmsg)
        self._files: list[TextIO | None] | None = None
        self._lock = threading.Lock()

    def _open(self) -> list[TextIO | None]:
        """Open both once, on first use: nothing is writable before the early mounts."""
        if self._files is None:
            files: list[TextIO | None] = []
            for path in self._paths:
                try:
                    files.append(open(path, "w", buffering=1))  # noqa: SIM115 - kept open for the node's life
                except OSError:
                    files.append(None)
            self._files = files
        return self._files

    def log(self, message: str) -> None:
        """One line per message; a multi-line message becomes several prefixed lines.

        Keys and tokens are redacted first: readers may read the kernel log (``osctl dmesg``).
        """
        with self._lock:
            console, kmsg = self._open()
            for part in redact(message).splitlines() or [""]:
                line = f"[talos] {part}"
                for f, text in ((console, line + "\n"), (kmsg, f"<6>{line}\n")):
                    if f is not None:
                        with contextlib.suppress(OSError):
                            f.write(text)
