"""The restart decision on its own: no processes, threads or clocks, every branch of the policy."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talos_os.init.supervisor import (
    Restart,
    RestartDecision,
    ServiceSpec,
    State,
    Supervisor,
    Verdict,
    decide_restart,
)
from talos_os.init.supervisor import core as supervisor_core

# Fixed delays (no jitter) of 1, 2, 4, 8, capped at 8; runs of 10 s or more count as stable.
SPEC = ServiceSpec("svc", ["true"], backoff_base=1.0, backoff_cap=8.0, backoff_jitter=0.0, stable_after=10.0)


def decide(spec: ServiceSpec = SPEC, code: int | None = 1, ran: float = 0.1, **kw: Any) -> RestartDecision:
    args: dict[str, Any] = {"restarts": 0, "streak": 0, "stop_requested": False} | kw
    return decide_restart(spec, code, ran, **args)


def with_policy(restart: Restart, **changes: Any) -> ServiceSpec:
    return dataclasses.replace(SPEC, restart=restart, **changes)


@pytest.mark.parametrize(
    ("restart", "code", "verdict"),
    [
        (Restart.ON_FAILURE, 0, Verdict.FINISHED),
        (Restart.NEVER, 0, Verdict.FINISHED),
        (Restart.ALWAYS, 0, Verdict.RESTART),  # a daemon that exits cleanly is still restarted
        (Restart.ON_FAILURE, 1, Verdict.RESTART),
        (Restart.ON_FAILURE, -9, Verdict.RESTART),  # killed by a signal is a failure
        (Restart.ON_FAILURE, None, Verdict.RESTART),  # prepare or start failed: try again
        (Restart.ALWAYS, 1, Verdict.RESTART),
        (Restart.NEVER, 1, Verdict.FAILED),
        (Restart.NEVER, -15, Verdict.FAILED),
        (Restart.NEVER, None, Verdict.FAILED),
    ],
)
def test_policy_by_exit_code(restart: Restart, code: int | None, verdict: Verdict) -> None:
    decision = decide(with_policy(restart), code, restarts=2, streak=1)
    assert decision.verdict == verdict
    if verdict == Verdict.RESTART:
        assert decision.restarts == 3 and decision.delay > 0
    else:  # nothing of the history changes when the service is left alone
        assert (decision.restarts, decision.streak, decision.delay) == (2, 1, 0.0)


@pytest.mark.parametrize("restart", list(Restart))
@pytest.mark.parametrize("code", [0, 1, -9, None])
def test_a_requested_stop_wins_over_every_policy(restart: Restart, code: int | None) -> None:
    spec = with_policy(restart, max_restarts=0)
    decision = decide(spec, code, restarts=5, streak=3, stop_requested=True)
    assert decision == RestartDecision(Verdict.STOPPED, restarts=5, streak=3)
    assert decision.state == State.STOPPED
    assert decision.message("killed by SIGTERM") == "stopped (killed by SIGTERM)"


def test_gives_up_after_max_restarts() -> None:
    spec = with_policy(Restart.ON_FAILURE, max_restarts=3)
    assert decide(spec, restarts=2).verdict == Verdict.RESTART  # the third restart is allowed
    gave_up = decide(spec, restarts=3)
    assert gave_up.verdict == Verdict.GAVE_UP and gave_up.state == State.FAILED
    assert gave_up.message("exited with code 1") == "exited with code 1; giving up after 3 restarts"
    # max_restarts counts restarts, not runs: 0 means the first failure is final.
    assert decide(with_policy(Restart.ALWAYS, max_restarts=0), 0).verdict == Verdict.GAVE_UP
    # A success under on-failure finishes even when the restart budget is spent.
    assert decide(spec, 0, restarts=3).verdict == Verdict.FINISHED
    # No limit: keeps restarting however many restarts came before.
    assert decide(restarts=10_000).verdict == Verdict.RESTART


def test_crash_loop_backs_off_exponentially_up_to_the_cap() -> None:
    restarts, streak, delays, messages = 0, 0, [], []
    for _ in range(6):
        d = decide(restarts=restarts, streak=streak)
        assert d.verdict == Verdict.RESTART and d.state == State.WAITING
        restarts, streak = d.restarts, d.streak
        delays.append(d.delay)
        messages.append(d.message("exited with code 2"))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert (restarts, streak) == (6, 6)
    assert messages[0] == "exited with code 2; restart 1 in 1.00s"
    assert messages[3] == "exited with code 2; restart 4 in 8.00s"


def test_a_stable_run_resets_the_backoff() -> None:
    long_run = decide(ran=10.0, restarts=7, streak=5)  # exactly stable_after counts as stable
    assert (long_run.streak, long_run.delay, long_run.restarts) == (1, 1.0, 8)
    short_run = decide(ran=9.99, restarts=7, streak=5)
    assert (short_run.streak, short_run.delay) == (6, 8.0)


def test_jitter_takes_away_a_fraction_of_the_delay() -> None:
    spec = dataclasses.replace(SPEC, backoff_jitter=0.5)
    assert decide(spec, streak=2, rng=lambda: 1.0).delay == 4.0 * 0.5
    assert decide(spec, streak=2, rng=lambda: 0.0).delay == 4.0
    assert decide(spec, streak=2, rng=lambda: 0.5).delay == 4.0 * 0.75


def test_finished_and_failed_messages_are_the_outcome() -> None:
    assert decide(code=0).message("exited with code 0") == "exited with code 0"
    failed = decide(with_policy(Restart.NEVER), None)
    assert failed.state == State.FAILED
    assert failed.message("prepare failed: no such file") == "prepare failed: no such file"


@settings(deadline=None)  # a pure function: a loaded CI machine must not fail it on time
@given(
    restart=st.sampled_from(list(Restart)),
    code=st.one_of(st.none(), st.integers(-64, 255)),
    ran=st.floats(0.0, 1e6),
    restarts=st.integers(0, 1000),
    streak=st.integers(0, 1000),
    stop=st.booleans(),
    max_restarts=st.one_of(st.none(), st.integers(0, 1000)),
    jitter=st.floats(0.0, 1.0),
    rand=st.floats(0.0, 1.0),
)
def test_invariants(
    restart: Restart,
    code: int | None,
    ran: float,
    restarts: int,
    streak: int,
    stop: bool,
    max_restarts: int | None,
    jitter: float,
    rand: float,
) -> None:
    spec = with_policy(restart, max_restarts=max_restarts, backoff_jitter=jitter)
    d = decide(spec, code, ran, restarts=restarts, streak=streak, stop_requested=stop, rng=lambda: rand)
    assert (d.verdict == Verdict.STOPPED) == stop
    if d.verdict == Verdict.RESTART:
        assert d.restarts == restarts + 1
        assert d.streak == (1 if ran >= spec.stable_after else streak + 1)
        assert 0.0 <= d.delay <= spec.backoff_cap
        assert max_restarts is None or restarts < max_restarts
        assert not (code == 0 and restart != Restart.ALWAYS) and restart != Restart.NEVER
    else:
        assert (d.restarts, d.streak, d.delay) == (restarts, streak, 0.0)
    if d.verdict == Verdict.FINISHED:
        assert code == 0 and restart != Restart.ALWAYS
    if d.verdict == Verdict.FAILED:
        assert restart == Restart.NEVER and code != 0
    if d.verdict == Verdict.GAVE_UP:
        assert max_restarts is not None and restarts >= max_restarts


def test_the_supervisor_carries_out_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """_run asks decide_restart and obeys it: here a verdict no policy would give for this spec."""
    calls: list[tuple[int | None, int, int, bool]] = []

    def give_up(spec: ServiceSpec, code: int | None, ran: float, **kw: Any) -> RestartDecision:
        calls.append((code, kw["restarts"], kw["streak"], kw["stop_requested"]))
        if len(calls) < 3:
            return RestartDecision(Verdict.RESTART, kw["restarts"] + 1, kw["streak"] + 1, 0.0)
        return RestartDecision(Verdict.GAVE_UP, kw["restarts"], kw["streak"])

    monkeypatch.setattr(supervisor_core, "decide_restart", give_up)
    sup = Supervisor(log_dir=None)
    sup.add(ServiceSpec("exit7", [sys.executable, "-c", "raise SystemExit(7)"], restart=Restart.ALWAYS))
    sup.start()
    try:
        assert sup.wait_for("exit7", [State.FAILED], timeout=10.0)
    finally:
        sup.shutdown(timeout=5.0)
    # The history the decision returned is what the next call got.
    assert calls == [(7, 0, 0, False), (7, 1, 1, False), (7, 2, 2, False)]
    info = sup.info("exit7")
    assert info.restarts == 2 and info.message == "exited with code 7; giving up after 2 restarts"
