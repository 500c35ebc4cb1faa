"""What a platform's guest half gives the init: where the machine config is, and a hostname.

Each plugin under ``platforms/`` sets ``PlatformPlugin.guest`` to an object with this shape; the
init only talks to it through :class:`GuestContext`, so every probe (sysfs root, block devices,
mounts, endpoints) is a parameter a host test can point somewhere harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from talos_os.lib.cmdline import Cmdline
from talos_os.lib.fetch import ConfigRef
from talos_os.plugins.nocloud import BlockDevice, list_block_devices, read_smbios_serial


def _no_log(_message: str) -> None:
    return None


@dataclass
class GuestContext:
    """The node as a guest half sees it."""

    cmdline: Cmdline
    root: Path = Path("/")
    log: Callable[[str], None] = _no_log
    # Block devices are listed lazily: only a platform that looks for a cidata volume pays for it.
    devices: Callable[[], list[BlockDevice]] | None = None
    mount: Callable[[BlockDevice], AbstractContextManager[Path]] | None = None
    facts: dict[str, str] = field(default_factory=dict)  # e.g. instance-id, learnt while probing

    def block_devices(self) -> list[BlockDevice]:
        return self.devices() if self.devices is not None else list_block_devices(self.root)

    def smbios_serial(self) -> str | None:
        return read_smbios_serial(self.root)


@dataclass(frozen=True)
class Probe:
    """What a guest half reads to recognise its platform: small sysfs/procfs values under ``root``.

    Each platform detects itself (as cloud-init's datasources do); the init asks them in the
    plugins' ``detect_order`` and only when ``talos.platform=`` is absent.
    """

    root: Path = Path("/")

    def read(self, rel: str) -> str:
        """A small value, stripped; "" if absent or unreadable (product_uuid is root-only)."""
        try:
            return (self.root / rel).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def dmi(self, name: str) -> str:
        """``/sys/class/dmi/id/NAME``: the firmware's vendor, product and uuid strings."""
        return self.read(f"sys/class/dmi/id/{name}")

    def is_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()


class Guest(Protocol):
    """A platform's guest half."""

    def detect(self, probe: Probe) -> str | None:
        """Why this machine is on this platform (a reason for the boot log), or None if it is not."""
        ...

    def find_config(self, ctx: GuestContext) -> ConfigRef | None:
        """The config (bytes or a URL), or None when the platform offers none yet; may raise on I/O."""
        ...

    def hostname(self, ctx: GuestContext) -> str | None:
        """The hostname the platform assigns (metadata), if any."""
        ...
