"""Taking the node down as phase lists, like boot: each step named, run in order and logged with
its duration (``reboot phase sync: done in 3 ms``; not ``phase ...``, which the boot bench reads as
boot phases). The steps themselves live with the init's state in :mod:`talos_os.init.main`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class StopPhase(Generic[T]):
    """One step of taking the node down, run with the action (``reboot``, ``shutdown``, ``reset``).

    ``best_effort``: a failure is logged and the next step runs; any other failure is logged and
    propagates (to the init's panic, which reboots the node after its delay).
    """

    name: str
    run: Callable[[T, str], None]
    best_effort: bool = False


def run_stop_phases(
    ctx: T,
    action: str,
    phases: Sequence[StopPhase[T]],
    log: Callable[[str], None],
    durations: dict[str, float],
) -> None:
    """Run each step in order, logging its name and duration into ``durations``."""
    for phase in phases:
        start = time.monotonic()
        try:
            phase.run(ctx, action)
        except Exception as exc:
            log(
                f"{action} phase {phase.name}: failed after {(time.monotonic() - start) * 1000:.0f} ms: {exc}"
            )
            if not phase.best_effort:
                raise
            continue
        durations[phase.name] = time.monotonic() - start
        log(f"{action} phase {phase.name}: done in {durations[phase.name] * 1000:.0f} ms")
