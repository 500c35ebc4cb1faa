"""Retrying with jittered exponential backoff: config sources at boot, the upgrade download, the
supervisor's restart delays and the AMI uploader on the host all share it.

Jitter matters because a fleet of nodes booting together must not hammer a server in lockstep.
Standard library only: this module ships inside the node image.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class TransientError(Exception):
    """A failure worth retrying: :func:`retry` retries these by default and nothing else."""


def backoff_delay(
    attempt: int, *, base: float, cap: float, jitter: float = 1.0, rng: Callable[[], float] = random.random
) -> float:
    """Delay before retry number ``attempt`` (1-based): ``base * 2**(attempt-1)`` capped at ``cap``.

    ``jitter`` is the fraction of that delay that is randomised away: 1.0 is "full jitter"
    (uniform in ``[0, d]``), 0.0 is a fixed delay (deterministic tests).
    """
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    jitter = min(1.0, max(0.0, jitter))
    return delay * (1.0 - jitter * rng())


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


def retry(
    fn: Callable[[], T],
    *,
    attempts: int | None = None,
    deadline: float | None = None,
    base: float = 0.5,
    cap: float = 30.0,
    jitter: float = 1.0,
    retry_if: Callable[[BaseException], bool] = _is_transient,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call ``fn`` until it succeeds, an exception ``retry_if`` rejects is raised, or the budget ends.

    The budget is ``attempts`` calls and/or ``deadline`` seconds from now (at least one of them;
    whichever ends first). When the budget is spent the last exception is re-raised unchanged,
    so callers see the real cause. ``on_retry(attempt, exc, delay)`` is called before each sleep.
    """
    if attempts is None and deadline is None:
        raise ValueError("retry needs attempts= or deadline=, or it could loop forever")
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be at least 1")
    end = None if deadline is None else clock() + deadline
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not retry_if(exc):
                raise
            if attempts is not None and attempt >= attempts:
                raise
            delay = backoff_delay(attempt, base=base, cap=cap, jitter=jitter, rng=rng)
            if end is not None:
                remaining = end - clock()
                if remaining <= 0:
                    raise
                delay = min(delay, remaining)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
