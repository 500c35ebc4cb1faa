"""Bare-metal guest half: a ``talos.config=`` URL with ``${uuid}``/``${mac}``/``${hostname}``, or cidata."""

from __future__ import annotations

from platforms.bare_metal.sources import discover_config
from talos_os.lib.fetch import ConfigRef
from talos_os.plugins.guest import GuestContext, Probe


class BareMetalGuest:
    """Config sources of a physical machine (PXE/iPXE command line, or a config volume)."""

    def detect(self, probe: Probe) -> str | None:
        """The fallback: asked last, so any machine no hypervisor claimed is bare metal."""
        return "no hypervisor found"

    def find_config(self, ctx: GuestContext) -> ConfigRef | None:
        return discover_config(
            ctx.cmdline,
            root=ctx.root,
            devices=ctx.block_devices() if ctx.mount is not None else None,
            mount=ctx.mount,
            smbios_serial=ctx.smbios_serial(),
        )

    def hostname(self, ctx: GuestContext) -> str | None:
        return None
