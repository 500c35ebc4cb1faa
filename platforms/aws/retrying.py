"""Bounded retries with jittered exponential backoff, and polling until AWS reports a state.

The backoff itself is ``talos_os.lib.retry.retry`` (the node's, already tested); this adds the
AWS notion of what is worth retrying and a poll loop with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bakery.errors import BakeError
from platforms.aws.clients import transient
from talos_os.lib.retry import retry

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` calls at most; delays ``base * 2**n`` capped at ``cap``, fully jittered."""

    attempts: int = 6
    base: float = 0.25
    cap: float = 8.0

    def call(
        self, fn: Callable[[], T], on_retry: Callable[[int, BaseException, float], None] | None = None
    ) -> T:
        return retry(
            fn, attempts=self.attempts, base=self.base, cap=self.cap, retry_if=transient, on_retry=on_retry
        )


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    poll: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call ``check`` until it returns True (it raises BakeError for a failed state) or ``timeout`` passes."""
    end = clock() + timeout
    while not check():
        if clock() >= end:
            raise BakeError(
                f"{what} did not finish within {timeout:.0f} s: look at it in the AWS console and retry"
            )
        sleep(poll)
