"""Xen: config from xenstore vm-data; HVM or PV (pygrub) domains."""

from talos_os.plugins import PlatformPlugin

PLUGIN = PlatformPlugin(
    name="xen",
    description="Xen (config from xenstore vm-data; HVM or PV through pygrub)",
)
