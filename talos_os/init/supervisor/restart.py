"""What happens to a service once a run has ended: finished, failed, given up on, or restarted later.

A pure function of the run's outcome and the service's history, in the spirit of Talos's restart
runner (which wraps another runner and only decides): the policy is tested without processes,
threads or clocks, and the supervisor's thread only carries the decision out.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from talos_os.init.supervisor.model import Restart, ServiceSpec, State
from talos_os.lib.retry import backoff_delay


class Verdict(enum.StrEnum):
    STOPPED = "stopped"  # a stop was asked for: never restarted, whatever the policy
    FINISHED = "finished"  # exited 0 under a policy that does not restart successes
    FAILED = "failed"  # Restart.NEVER and the run did not exit 0 (or never started)
    GAVE_UP = "gave-up"  # failed again after max_restarts restarts
    RESTART = "restart"  # back off ``delay`` seconds, then run again


# The state the service is left in for each verdict (RESTART waits for its next run).
_STATES = {
    Verdict.STOPPED: State.STOPPED,
    Verdict.FINISHED: State.FINISHED,
    Verdict.FAILED: State.FAILED,
    Verdict.GAVE_UP: State.FAILED,
    Verdict.RESTART: State.WAITING,
}


@dataclass(frozen=True)
class RestartDecision:
    """The verdict, and the history to carry into the next run (unchanged unless restarting)."""

    verdict: Verdict
    restarts: int  # restarts made so far, this one included
    streak: int  # consecutive short runs, which set the backoff
    delay: float = 0.0  # seconds to wait before the next run (RESTART only)

    @property
    def state(self) -> State:
        return _STATES[self.verdict]

    def message(self, outcome: str) -> str:
        """The service's status line, given how the run ended (``exited with code 1``...)."""
        if self.verdict == Verdict.STOPPED:
            return f"stopped ({outcome})"
        if self.verdict == Verdict.GAVE_UP:
            return f"{outcome}; giving up after {self.restarts} restarts"
        if self.verdict == Verdict.RESTART:
            return f"{outcome}; restart {self.restarts} in {self.delay:.2f}s"
        return outcome


def decide_restart(
    spec: ServiceSpec,
    exit_code: int | None,
    ran: float,
    *,
    restarts: int,
    streak: int,
    stop_requested: bool,
    rng: Callable[[], float] = random.random,
) -> RestartDecision:
    """Decide what follows a run of ``spec`` that lasted ``ran`` seconds.

    ``exit_code`` is None when the run never started (prepare or start failed), negative for a
    signal. A run of at least ``spec.stable_after`` seconds resets the backoff streak to 1, so a
    daemon that crashes once a day is restarted at once rather than after the cap. ``rng`` feeds
    the backoff's jitter (inject it for deterministic tests).
    """
    if stop_requested:
        return RestartDecision(Verdict.STOPPED, restarts, streak)
    if exit_code == 0 and spec.restart != Restart.ALWAYS:
        return RestartDecision(Verdict.FINISHED, restarts, streak)
    if spec.restart == Restart.NEVER:
        return RestartDecision(Verdict.FAILED, restarts, streak)
    if spec.max_restarts is not None and restarts >= spec.max_restarts:
        return RestartDecision(Verdict.GAVE_UP, restarts, streak)
    streak = 1 if ran >= spec.stable_after else streak + 1
    delay = backoff_delay(
        streak, base=spec.backoff_base, cap=spec.backoff_cap, jitter=spec.backoff_jitter, rng=rng
    )
    return RestartDecision(Verdict.RESTART, restarts + 1, streak, delay)
