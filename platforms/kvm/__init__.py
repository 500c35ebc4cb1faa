"""KVM/QEMU: config from the kernel command line, fw_cfg or a NoCloud volume; qcow2 + libvirt."""

from platforms.kvm.guest import KvmGuest
from talos_os.plugins import PlatformPlugin

PLUGIN = PlatformPlugin(
    name="kvm",
    description="KVM/QEMU (config from talos.config=, fw_cfg or cidata; published as qcow2 + libvirt)",
    guest=KvmGuest(),
    aliases=("qemu",),
    detect_order=30,
    host="platforms.kvm.cli",
)
