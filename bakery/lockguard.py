"""A bake leaves the tracked lock alone unless asked to update it.

When Debian drops a pinned version the fetcher uses the candidate and updates the lock it was given.
Given the tracked ``bakery/recipes/bake.lock``, that made a newcomer's checkout dirty after the first
bake. So a bake gets a scratch copy of the lock; afterwards every pin that moved is reported by name
(the image's manifest records what was used), and the tracked lock is only rewritten with
``--update-lock``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bakery.lock import Lock

R = TypeVar("R")


def moved_pins(before: Lock, after: Lock) -> list[str]:
    """What changed between two locks, one phrase per artifact."""
    changes = [
        f"kernel {flavour}: {before.kernels.get(flavour, '(none)')} -> {package}"
        for flavour, package in sorted(after.kernels.items())
        if before.kernels.get(flavour) != package
    ]
    for kind, old, new in (("", before.debs, after.debs), ("wheel ", before.wheels, after.wheels)):
        for name, pin in sorted(new.items()):
            was = old.get(name)
            if was is None:
                changes.append(f"{kind}{name}: added {pin.version}")
            elif was != pin:
                changes.append(f"{kind}{name}: {was.version} -> {pin.version}")
    return changes


def guarded(
    bake: Callable[[Any], R], opts: Any, *, update_lock: bool, say: Callable[[str], None]
) -> tuple[R, list[str]]:
    """``bake(opts)`` against a scratch copy of ``opts.lock_path`` unless ``update_lock``; returns the
    result and the pins that moved (the tracked lock keeps them unless ``update_lock``)."""
    tracked: Path = opts.lock_path
    if update_lock or opts.locked:  # --locked never writes the lock anyway
        before = Lock.load(tracked)
        result = bake(opts)
        return result, moved_pins(before, Lock.load(tracked))
    with tempfile.TemporaryDirectory(prefix="talos-bake-lock-") as tmp:
        scratch = Path(tmp) / tracked.name
        if tracked.exists():
            shutil.copyfile(tracked, scratch)
        result = bake(dataclasses.replace(opts, lock_path=scratch))
        moved = moved_pins(Lock.load(tracked), Lock.load(scratch))
    if moved:
        say(
            f"{tracked} was left as it is, though this bake used other versions ({'; '.join(moved)}; the "
            "image's manifest records them): pass --update-lock to record them"
        )
    return result, moved
