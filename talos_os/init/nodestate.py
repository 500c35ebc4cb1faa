"""State the node keeps on EPHEMERAL across reboots: its machine id and how many times it booted.

Both are logged at boot, so a reboot visibly keeps /var (and a reset visibly does not).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from talos_os import pki

STATE_DIR = Path("/var/lib/talos")


@dataclass(frozen=True)
class NodeState:
    machine_id: str
    boots: int
    new: bool  # the machine id was created on this boot


def load_or_create(state_dir: Path = STATE_DIR) -> NodeState:
    """Read (or make) the machine id and count this boot; files are replaced atomically."""
    state_dir.mkdir(parents=True, exist_ok=True)
    id_file, boots_file = state_dir / "machine-id", state_dir / "boots"
    new = False
    try:
        machine_id = id_file.read_text().strip()
    except FileNotFoundError:
        machine_id = ""
    if len(machine_id) != 32:
        machine_id, new = uuid.uuid4().hex, True
        pki.write_public(id_file, f"{machine_id}\n".encode())
    try:
        boots = int(boots_file.read_text().strip() or 0) + 1
    except (FileNotFoundError, ValueError):
        boots = 1
    pki.write_public(boots_file, f"{boots}\n".encode())
    return NodeState(machine_id, boots, new)
