"""Stage 1 loads only the modules that reach the root; the other boot modules load from the root
beside stage 2 (host-side checks of the split and of stage 2's half)."""

from __future__ import annotations

import errno
from pathlib import Path

from bakery.initramfs import split_boot_modules
from talos_os.init import modules
from talos_os.kmod import ModuleIndex

DEP = """\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/xen-blkfront.ko:
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko
kernel/drivers/cdrom/cdrom.ko:
kernel/drivers/ata/ata_piix.ko:
kernel/fs/squashfs/squashfs.ko:
kernel/fs/isofs/isofs.ko:
kernel/fs/xfs/xfs.ko:
kernel/fs/fat/vfat.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/net/xen-netfront.ko:
kernel/drivers/firmware/qemu_fw_cfg.ko:
"""


def test_stage1_keeps_what_finds_the_root_and_leaves_the_rest() -> None:
    index = ModuleIndex.parse(DEP, "kernel/drivers/nvme/host/nvme.ko\n")
    order = ["squashfs", "isofs", "xfs", "vfat", "virtio_pci", "virtio_blk", "sr_mod", "ata_piix",
             "xen-blkfront", "nvme", "virtio_net", "xen-netfront", "qemu_fw_cfg"]  # fmt: skip
    root, late = split_boot_modules(index, order)
    assert root == [
        "squashfs",
        "isofs",
        "virtio_pci",
        "virtio_blk",
        "sr_mod",
        "ata_piix",
        "xen-blkfront",
        "nvme",
    ]
    assert late == ["xfs", "vfat", "virtio_net", "xen-netfront", "qemu_fw_cfg"]


def test_stage2_learns_the_late_modules_from_stage1() -> None:
    assert modules.late_names({"TALOS_LATE_MODULES": "virtio_net qemu_fw_cfg"}) == [
        "virtio_net",
        "qemu_fw_cfg",
    ]
    assert modules.late_names({}) == []


def test_a_driver_without_its_hardware_is_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(DEP)

    def finit(path: str) -> bool:
        if "xen-netfront" in path:
            raise OSError(errno.ENODEV, "No such device")
        return not path.endswith("virtio_ring.ko")  # already loaded by the background loader

    report = modules.load(["xen-netfront", "virtio_net"], tmp_path, finit)
    assert report.no_device == ["xen_netfront"] and not report.failed
    assert report.loaded == ["virtio", "virtio_net"] and report.present == ["virtio_ring"]
