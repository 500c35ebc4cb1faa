"""Bare metal: config from a URL (PXE/iPXE) or a cidata volume; installed to disk or booted from ISO."""

from platforms.bare_metal.guest import BareMetalGuest
from talos_os.plugins import PlatformPlugin

PLUGIN = PlatformPlugin(
    name="bare-metal",
    description="Bare metal (config from talos.config=URL or cidata; installed to disk or ISO)",
    guest=BareMetalGuest(),
    aliases=("bare_metal", "metal", "baremetal"),
    detect_order=100,
    host="platforms.bare_metal.cli",
)
