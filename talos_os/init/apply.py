"""Apply the parts of a validated machine config that are plain files and kernel knobs.

Network settings go to :mod:`talos_os.init.network`; services read the saved config themselves.
Everything here takes its target directories as parameters so the host tests use tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

from talos_os import pki
from talos_os.config import FileOp, MachineConfig
from talos_os.init.hardening import KSPP_SYSCTLS
from talos_os.init.runpaths import CONFIG_PATH

__all__ = ["CONFIG_PATH", "config_sysctls", "save_config", "write_files"]


def save_config(data: bytes, path: Path = CONFIG_PATH) -> Path:
    """Keep the config's original bytes for osd, readable by root only, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_secret(path, data)
    return path


def config_sysctls(cfg: MachineConfig) -> tuple[dict[str, str], list[str]]:
    """The config's sysctls, minus any that would weaken a KSPP setting (those are reported)."""
    wanted = {k: str(v) for k, v in cfg.machine.sysctls.items()}
    refused = [k for k, v in wanted.items() if k in KSPP_SYSCTLS and v != KSPP_SYSCTLS[k]]
    return {k: v for k, v in wanted.items() if k not in refused}, refused


def write_files(cfg: MachineConfig, root: Path = Path("/")) -> list[str]:
    """``machine.files`` (all under /var, checked by the schema): create or append, with the mode."""
    written = []
    for entry in cfg.machine.files:
        target = root / entry.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if entry.op == FileOp.APPEND else os.O_TRUNC)
        fd = os.open(target, flags | os.O_NOFOLLOW, entry.permissions)
        with os.fdopen(fd, "w") as f:
            f.write(entry.content)
        os.chmod(target, entry.permissions)
        written.append(entry.path)
    return written
