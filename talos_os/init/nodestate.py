"""State the node keeps on EPHEMERAL across reboots: its machine id and how many times it booted.

Both are logged at boot, so a reboot visibly keeps /var (and a reset visibly does not).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = Path("/var/lib/talos")


@dataclass(frozen=True)
class NodeState:
    machine_id: str
    boots: int
    new: bool  # the machine id was created on this boot


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        _write(id_file, machine_id + "\n")
    try:
        boots = int(boots_file.read_text().strip() or 0) + 1
    except (FileNotFoundError, ValueError):
        boots = 1
    _write(boots_file, f"{boots}\n")
    return NodeState(machine_id, boots, new)
