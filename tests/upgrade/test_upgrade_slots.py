"""Which slot boots, as pure functions: upgrade, trial, keep, fall back, roll back."""

from __future__ import annotations

import pytest

from talos_os.upgrade import slots

FRESH = {"saved_entry": "talos-A", "talos_A": "good:0.1.0"}


def test_running_slot_comes_from_talos_root() -> None:
    assert slots.running_slot("ROOT-B") == "B"
    with pytest.raises(slots.SlotError, match="did not boot from an A/B disk"):
        slots.running_slot("iso:TALOS/root.sqsh")


def test_an_upgrade_writes_the_other_slot_then_boots_it_once_on_trial() -> None:
    env, target = slots.begin_write(FRESH, "A")
    assert target == "B" and env["talos_B"] == "writing" and env["saved_entry"] == "talos-A"
    assert not env.get("next_entry"), "a power cut while writing boots the running slot"
    env = slots.arm(env, "A", "B", "0.2.0", "foo=1")
    assert env["next_entry"] == "talos-B" and env["saved_entry"] == "talos-A"
    assert env["talos_B"] == "trying:0.2.0" and env["talos_B_args"] == "foo=1" and env["talos_try"] == "B"


def test_the_trial_boot_is_noted_and_marking_it_good_makes_it_the_default() -> None:
    env = slots.arm(slots.begin_write(FRESH, "A")[0], "A", "B", "0.2.0", "")
    env["next_entry"] = ""  # GRUB's save_env did this before booting B
    env, trial = slots.on_boot(env, "B", "0.2.0")
    assert trial and env["talos_try"] == "B" and env["saved_entry"] == "talos-A"
    env = slots.mark_good(env, "B", "0.2.0")
    assert env["saved_entry"] == "talos-B" and env["talos_B"] == "good:0.2.0" and not env["talos_try"]
    assert slots.status(env, "A") == slots.SlotStatus("A", "good", "0.1.0")


def test_a_trial_that_comes_back_on_the_old_slot_is_recorded_as_failed() -> None:
    env = slots.arm(slots.begin_write(FRESH, "A")[0], "A", "B", "0.2.0", "")
    env, trial = slots.on_boot(env, "A", "0.1.0")
    assert not trial and env["talos_B"] == "failed:0.2.0" and not env["talos_try"]
    assert "upgrade to 0.2.0 in slot B did not become ready" in env["talos_failed"]
    assert "booted slot A (0.1.0) again" in env["talos_failed"]
    with pytest.raises(slots.SlotError, match=r"slot B holds 0\.2\.0, whose upgrade failed"):
        slots.rollback(env, "A")


def test_rollback_needs_a_good_other_slot_and_makes_it_the_default() -> None:
    with pytest.raises(slots.SlotError, match="slot B has never been written; the node stays on slot A"):
        slots.rollback(FRESH, "A")
    env = slots.mark_good(slots.arm(slots.begin_write(FRESH, "A")[0], "A", "B", "0.2.0", ""), "B", "0.2.0")
    env, target = slots.rollback(env, "B")
    assert env["saved_entry"] == "talos-A" and target.version == "0.1.0"
    half = slots.begin_write(env, "A")[0]
    with pytest.raises(slots.SlotError, match="was being written"):
        slots.rollback(half, "A")


def test_no_upgrade_while_the_running_slot_is_on_trial() -> None:
    env = {**FRESH, "talos_try": "A"}
    with pytest.raises(slots.SlotError, match="still on trial"):
        slots.begin_write(env, "A")


def test_a_first_boot_without_state_records_its_slot_as_good() -> None:
    env, trial = slots.on_boot({}, "A", "0.1.0")
    assert not trial and env["saved_entry"] == "talos-A" and env["talos_A"] == "good:0.1.0"
