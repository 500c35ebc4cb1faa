"""``osctl upgrade --wait``: how an upgrade ended, read from the node's slots before and after."""

from __future__ import annotations

from talos_os.api.gen import upgrade_pb2 as pb
from talos_os.osctl.upgrade_cmds import outcome


def slots(
    running: str, a: tuple[str, str], b: tuple[str, str], trial: str = "", failure: str = ""
) -> pb.UpgradeSlots:
    return pb.UpgradeSlots(
        ab=True,
        slots=[
            pb.UpgradeSlot(slot="A", state=a[0], version=a[1], running=running == "A"),
            pb.UpgradeSlot(slot="B", state=b[0], version=b[1], running=running == "B"),
        ],
        trial=trial,
        last_failure=failure,
    )


BEFORE = slots("A", ("good", "1.0"), ("", ""))


def test_the_new_slot_counts_once_it_is_good_and_off_trial() -> None:
    assert outcome(BEFORE, None) is None  # rebooting
    assert outcome(BEFORE, slots("A", ("good", "1.0"), ("trying", "1.1"))) is None  # not down yet
    assert outcome(BEFORE, slots("B", ("good", "1.0"), ("trying", "1.1"), trial="B")) is None
    assert outcome(BEFORE, slots("B", ("good", "1.0"), ("good", "1.1"))) == (
        True,
        "running 1.1 from slot B, kept",
    )


def test_back_on_the_old_slot_with_a_new_failure_is_a_failed_upgrade() -> None:
    failure = "the upgrade to 1.1 in slot B did not become ready"
    assert outcome(BEFORE, slots("A", ("good", "1.0"), ("failed", "1.1"), failure=failure)) == (
        False,
        f"back on 1.0 in slot A: {failure}",
    )
    older = slots("A", ("good", "1.0"), ("failed", "0.9"), failure="an older failure")
    assert outcome(older, older) is None, "a failure reported before this upgrade is not its outcome"
    assert outcome(BEFORE, pb.UpgradeSlots(ab=False, message="not an A/B disk")) is None
