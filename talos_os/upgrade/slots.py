"""Which slot boots, as pure functions over GRUB's environment (unit-tested without a disk).

Variables (all in ``/boot/grub/grubenv``, read by GRUB and the init alike):

- ``saved_entry``: the good slot's menu entry (``talos-A``); GRUB boots it by default.
- ``next_entry``: the entry to boot once; GRUB clears it (``save_env``) before booting it, so a new
  slot that never becomes ready is left behind by the next reboot, whatever stopped it.
- ``talos_A`` / ``talos_B``: ``STATE:VERSION`` with STATE one of good, trying, failed, writing.
- ``talos_A_args`` / ``talos_B_args``: extra kernel arguments of that slot's bundle.
- ``talos_try`` / ``talos_from``: the slot on trial and the slot it replaces.
- ``talos_failed``: the sentence about the last attempt that failed (``osctl version`` shows it).
- ``talos_cordoned``: the upgrade cordoned this Kubernetes node; the new slot uncordons it.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOTS = ("A", "B")
GOOD, TRYING, FAILED, WRITING = "good", "trying", "failed", "writing"


class SlotError(Exception):
    """The request cannot be carried out in this state; the message says why."""


@dataclass(frozen=True)
class SlotStatus:
    slot: str
    state: str  # good, trying, failed, writing, or "" (never written)
    version: str


def entry(slot: str) -> str:
    return f"talos-{slot}"


def other(slot: str) -> str:
    if slot not in SLOTS:
        raise SlotError(f"{slot!r} is not a slot (A or B)")
    return "B" if slot == "A" else "A"


def running_slot(root: str | None) -> str:
    """The slot of ``talos.root=ROOT-X``; an ISO or missing root is not an A/B install."""
    if root in ("ROOT-A", "ROOT-B"):
        return root[-1]
    raise SlotError(
        f"this node did not boot from an A/B disk (talos.root={root or 'unset'}): install it to a disk first"
    )


def status(env: dict[str, str], slot: str) -> SlotStatus:
    state, _, version = env.get(f"talos_{slot}", "").partition(":")
    return SlotStatus(slot, state, version)


def _set(env: dict[str, str], slot: str, state: str, version: str) -> None:
    env[f"talos_{slot}"] = f"{state}:{version}" if version else state


def on_boot(env: dict[str, str], running: str, version: str) -> tuple[dict[str, str], bool]:
    """What a boot learns and records: (the new env, whether this boot is a trial of a new slot).

    A trial that is not the slot now running failed: it is marked so and explained in
    ``talos_failed``. A first boot of an image records its slot as good.
    """
    env = dict(env)
    trying = env.get("talos_try", "")
    trial = False
    if trying == running:
        trial = True
        env["next_entry"] = ""  # GRUB cleared it; a firmware that could not write it must not loop here
    elif trying:
        tried = status(env, trying)
        _set(env, trying, FAILED, tried.version)
        env["talos_failed"] = (
            f"the upgrade to {tried.version or 'a new version'} in slot {trying} did not become ready, so the "
            f"node booted slot {running} ({version}) again"
        )
        env["talos_try"] = env["talos_from"] = env["next_entry"] = ""
    if not env.get("saved_entry"):
        env["saved_entry"] = entry(running)
    if not trial and env.get("saved_entry") == entry(running) and status(env, running).state != GOOD:
        _set(env, running, GOOD, version)
    return env, trial


def begin_write(env: dict[str, str], running: str) -> tuple[dict[str, str], str]:
    """Before the first byte goes to the other slot: it is no longer bootable or a rollback target."""
    target = other(running)
    if env.get("talos_try") == running:
        raise SlotError(
            f"slot {running} is still on trial (not yet marked good): wait until the node is ready, then upgrade"
        )
    env = dict(env)
    env["saved_entry"] = entry(running) if not env.get("saved_entry") else env["saved_entry"]
    if env["saved_entry"] != entry(running):
        env["saved_entry"] = entry(running)  # the slot that runs is the good one from now on
    _set(env, target, WRITING, "")
    env[f"talos_{target}_args"] = ""
    env["next_entry"] = env["talos_try"] = env["talos_from"] = ""
    return env, target


def arm(env: dict[str, str], running: str, target: str, version: str, kernel_args: str) -> dict[str, str]:
    """After the slot is written and synced: boot it once, on trial."""
    env = dict(env)
    _set(env, target, TRYING, version)
    env[f"talos_{target}_args"] = kernel_args
    env["talos_try"], env["talos_from"] = target, running
    env["next_entry"] = entry(target)
    env["talos_failed"] = ""
    return env


def mark_good(env: dict[str, str], running: str, version: str) -> dict[str, str]:
    """The trial slot is ready: it becomes the default."""
    env = dict(env)
    _set(env, running, GOOD, version)
    env["saved_entry"] = entry(running)
    env["talos_try"] = env["talos_from"] = env["next_entry"] = ""
    return env


def rollback(env: dict[str, str], running: str) -> tuple[dict[str, str], SlotStatus]:
    """Make the other slot the default, if it holds a good version; else a sentence why not."""
    target = other(running)
    st = status(env, target)
    if st.state != GOOD:
        what = {
            "": "has never been written",
            TRYING: f"holds {st.version}, which never became ready",
            FAILED: f"holds {st.version}, whose upgrade failed",
            WRITING: "was being written when the node stopped (it is incomplete)",
        }.get(st.state, f"is in state {st.state!r}")
        raise SlotError(f"cannot roll back: slot {target} {what}; the node stays on slot {running}")
    if env.get("talos_try") == running:
        raise SlotError(
            f"slot {running} is on trial: if it does not become ready the node returns to slot {target} by itself"
        )
    env = dict(env)
    env["saved_entry"] = entry(target)
    env["next_entry"] = env["talos_try"] = env["talos_from"] = ""
    return env, st
