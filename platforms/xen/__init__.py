"""Xen: config from xenstore vm-data; HVM or PV (pygrub) domains."""

from platforms.xen.guest import XenGuest
from talos_os.plugins import PlatformPlugin

PLUGIN = PlatformPlugin(
    name="xen",
    description="Xen (config from xenstore vm-data; HVM or PV through pygrub)",
    guest=XenGuest(),
    detect_order=20,
    host="platforms.xen.cli",
)
