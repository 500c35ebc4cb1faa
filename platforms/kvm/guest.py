"""KVM guest half: ``talos.config=`` on the command line, then fw_cfg, then a NoCloud volume."""

from __future__ import annotations

from platforms.kvm.sources import FW_CFG_CONFIG, discover_config
from talos_os.lib.fetch import ConfigRef
from talos_os.plugins.guest import GuestContext, Probe


class KvmGuest:
    """Config sources of a QEMU/KVM guest, in priority order."""

    def detect(self, probe: Probe) -> str | None:
        vendor, product = probe.dmi("sys_vendor"), probe.dmi("product_name")
        if probe.is_dir("sys/firmware/qemu_fw_cfg"):
            return "/sys/firmware/qemu_fw_cfg exists"
        if vendor == "QEMU" or product.startswith(("KVM", "Standard PC")):
            return f"DMI says QEMU/KVM (sys_vendor {vendor!r}, product_name {product!r})"
        return None

    def find_config(self, ctx: GuestContext) -> ConfigRef | None:
        return discover_config(
            ctx.cmdline,
            fw_cfg_path=ctx.root / str(FW_CFG_CONFIG).lstrip("/"),
            devices=ctx.block_devices() if ctx.mount is not None else None,
            mount=ctx.mount,
            smbios_serial=ctx.smbios_serial(),
        )

    def hostname(self, ctx: GuestContext) -> str | None:
        return None  # QEMU has no metadata service; DHCP or the config names the node
