"""Checking a config pushed in maintenance mode, before anything is written.

The config must validate (the loader's path-named errors go back to the client); on a node booted
from the live ISO its ``machine.install.disk`` must be a disk of this node, big enough for the
image, not in use, and blank unless ``machine.install.wipe`` is true. Each refusal is one sentence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from talos_os.install import disk as install_disk
from talos_os.maintenance import disks

if TYPE_CHECKING:  # osd imports this module: the config model (pydantic) loads when a config is pushed
    from talos_os.config import MachineConfig

MiB = 1 << 20
LIST_HINT = "`osctl disks --insecure -n NODE` lists them"


class PushError(Exception):
    """The pushed config is refused; the message says why and what to fix."""


@dataclass(frozen=True)
class Accepted:
    """A config the node takes: what happens next, in one sentence."""

    config: MachineConfig
    action: str  # "install" (live ISO with install.disk) or "boot"
    message: str
    install_disk: str | None = None


def check_push(
    data: bytes,
    image_size: int | None,
    *,
    system: install_disk.System = disks.SYSTEM,
    sys_root: Path = Path("/sys"),
) -> Accepted:
    """Validate ``data``; ``image_size`` is the live ISO's image size (None: not booted from the ISO)."""
    from talos_os.config import ConfigError, loads

    try:
        cfg = loads(data)
    except ConfigError as err:
        raise PushError(str(err)) from None
    install = cfg.machine.install
    disk = install.disk if install is not None else None
    if image_size is None:
        note = " (machine.install is ignored: the node already runs from its disk)" if disk else ""
        return Accepted(cfg, "boot", f"config accepted: the node boots with it{note}")
    if disk is None:
        return Accepted(
            cfg,
            "boot",
            "config accepted: the node runs from the ISO with /var in memory (set machine.install.disk "
            "to install it to a disk)",
        )
    assert install is not None
    if not os.path.exists(disk):
        found = disks.list_disks(sys_root, probe=False)
        names = [d.path for d in found if d.size and not d.read_only and not d.name.startswith(disks.OPTICAL)]
        choice = f"choose one of {', '.join(names)}" if names else "this node has no disk"
        raise PushError(f"machine.install.disk: {disk} does not exist on this node: {choice} ({LIST_HINT})")
    try:
        target = install_disk.inspect_target(Path(disk))
        if not target.block:
            raise PushError(f"machine.install.disk: {disk} is not a disk: name a block device ({LIST_HINT})")
        held = install_disk.check(
            target,
            image_size,
            install.wipe,
            system,
            force_hint="set machine.install.wipe: true to overwrite it",
            smaller_hint=f"choose a larger disk ({LIST_HINT})",
        )
    except install_disk.InstallError as exc:
        raise PushError(f"machine.install.disk: {exc}") from None
    wiped = f", overwriting {' and '.join(held)} (install.wipe)" if held else ""
    return Accepted(
        cfg,
        "install",
        f"config accepted: installing to {disk} ({target.size // MiB} MiB{wiped}), then rebooting into "
        "the installed system",
        install_disk=disk,
    )
