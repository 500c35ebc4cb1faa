"""Fair shares of osd's worker threads, so that one client cannot starve the API for everyone.

grpc's synchronous server runs each call on a worker thread, and a stream that follows a log holds
its thread for as long as the client wants. Without limits, a reader opening a hundred
``logs -f`` takes every worker and an admin's ``version`` times out. So calls are admitted here,
after authentication and before the method runs:

- streams that follow (``logs -f``, ``dmesg -f``) are capped on the node and per client;
- calls by ``os:reader`` clients are capped in total, so admins always keep a share of workers.

A refused call ends at once with RESOURCE_EXHAUSTED and a sentence saying which limit it met;
nothing waits in a queue behind it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """How many calls of each kind may run at once (see :func:`for_workers`)."""

    follows: int = 16
    follows_per_client: int = 4
    reader_calls: int = 32


def for_workers(workers: int) -> Limits:
    """Limits that leave at least a quarter of ``workers`` to admins whatever readers do.

    Busy workers are at most admin follows (within ``follows``) plus reader calls: a quarter plus a
    half of the pool.
    """
    return Limits(follows=max(1, workers // 4), follows_per_client=4, reader_calls=max(1, workers // 2))


class Refused(Exception):
    """The call would exceed a limit; the message names it."""


class Admission:
    """Counts the calls running now and refuses the ones over a :class:`Limits`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._follows: Counter[str] = Counter()
        self._readers = 0

    @contextlib.contextmanager
    def admit(self, client: str, *, admin: bool, follow: bool) -> Iterator[None]:
        """Hold a place for one call of ``client`` while the block runs; raise :class:`Refused` if full."""
        limits = self.limits
        with self._lock:
            if follow:
                if sum(self._follows.values()) >= limits.follows:
                    raise Refused(
                        f"{limits.follows} streams already follow logs on this node (the most it "
                        "serves at once): stop one, or read without following"
                    )
                if self._follows[client] >= limits.follows_per_client:
                    raise Refused(
                        f"client {client!r} already follows {limits.follows_per_client} logs (the most "
                        "per client): stop one, or read without following"
                    )
            if not admin and self._readers >= limits.reader_calls:
                raise Refused(
                    f"{limits.reader_calls} calls by readers are already running on this node: try again "
                    "shortly (admins keep a share of the API)"
                )
            if follow:
                self._follows[client] += 1
            if not admin:
                self._readers += 1
        try:
            yield
        finally:
            with self._lock:
                if follow:
                    self._follows[client] -= 1
                    if not self._follows[client]:
                        del self._follows[client]
                if not admin:
                    self._readers -= 1

    def running(self) -> tuple[int, int]:
        """(follow streams, reader calls) running now."""
        with self._lock:
            return sum(self._follows.values()), self._readers
