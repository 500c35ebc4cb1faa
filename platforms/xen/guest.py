"""Xen guest half: xenstore ``vm-data/user-data`` or ``vm-data/talos-config-url``, else ``talos.config=``."""

from __future__ import annotations

from platforms.xen.xenstore import DEVICE_PATHS, XenstoreClient, XenstoreError, fetch_xen_config
from talos_os.lib.fetch import ConfigRef
from talos_os.plugins.guest import GuestContext, Probe


class XenGuest:
    """Reads xenstore over the xenbus device; the command line is the fallback."""

    def __init__(self, device_paths: tuple[str, ...] = DEVICE_PATHS) -> None:
        self.device_paths = device_paths

    def detect(self, probe: Probe) -> str | None:
        vendor, product = probe.dmi("sys_vendor"), probe.dmi("product_name")
        if probe.read("sys/hypervisor/type").lower() == "xen":
            return "/sys/hypervisor/type is 'xen'"
        if probe.is_dir("proc/xen"):
            return "/proc/xen exists"
        if vendor.lower() == "xen" or product == "HVM domU":
            return f"DMI says Xen (sys_vendor {vendor!r}, product_name {product!r})"
        return None

    def find_config(self, ctx: GuestContext) -> ConfigRef | None:
        try:
            with XenstoreClient.open_device(self.device_paths) as client:
                ref = fetch_xen_config(client)
        except (OSError, XenstoreError) as exc:
            ctx.log(f"xen: xenstore unavailable ({exc}); trying talos.config=")
            ref = None
        if ref is not None:
            return ref
        url = ctx.cmdline.get("talos.config")
        return ConfigRef(source="kernel command line talos.config=", url=url) if url else None

    def hostname(self, ctx: GuestContext) -> str | None:
        try:
            with XenstoreClient.open_device(self.device_paths) as client:
                value = client.read_optional("name")
        except (OSError, XenstoreError):
            return None
        name = (value or b"").decode("utf-8", "replace").strip("\0 \n")
        return name or None
