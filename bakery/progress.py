"""Progress lines for long work (downloads, bake steps), on stderr so stdout stays scriptable."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """Step-by-step progress with durations; quiet mode for tests that only want results."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Announce a step, then report how long it took."""
        self.say(f"{name} ...")
        start = time.monotonic()
        yield
        took = time.monotonic() - start
        self.timings[name] = self.timings.get(name, 0.0) + took
        self.say(f"{name}: done in {took:.1f}s")

    def count(self, what: str, done: int, total: int) -> None:
        """A counter line such as 'downloading packages: 12/40'."""
        if not self.quiet and total and (done == total or done % max(1, total // 10) == 0):
            self.say(f"{what}: {done}/{total}")
