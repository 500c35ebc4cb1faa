"""Stage 1 loads only the modules that reach the root; the other boot modules load from the root
beside stage 2 (host-side checks of the split and of stage 2's half)."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

from bakery.initramfs import split_boot_modules
from bakery.recipe import load_kernel
from talos_os.init import modules, stage1
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


TABLE_DEP = DEP + "kernel/drivers/net/ethernet/amazon/ena/ena.ko:\nkernel/drivers/net/mlx5_core.ko:\n"


def platform_table() -> str:
    """The bakery's table for a recipe shaped like ours (bare metal loads everything)."""
    from bakery.initramfs import render_platform_modules
    from bakery.recipe import PlatformModules
    from bakery.steps import platform_module_table

    recipe = load_kernel()
    shaped = dataclasses.replace(
        recipe,
        platforms={
            "kvm": PlatformModules(("virtio_pci", "virtio_blk", "virtio_net", "qemu_fw_cfg")),
            "xen": PlatformModules(("xen-blkfront", "xen-netfront")),
            "aws": PlatformModules(("ena", "xen-netfront")),
            "bare-metal": PlatformModules((), ("mlx5_core", "e1000"), all_drivers=True),
        },
    )
    return render_platform_modules(platform_module_table(shaped, ModuleIndex.parse(TABLE_DEP)))


LATE = ["vfat", "virtio_net", "qemu_fw_cfg", "xen-netfront", "ena", "mlx5_core"]


def test_a_kvm_boot_loads_its_own_and_the_shared_boot_modules_only() -> None:
    table = platform_table()
    assert "bare-metal: * mlx5_core" in table.splitlines()
    assert stage1.late_for_platform(LATE, "kvm", table) == ["vfat", "virtio_net", "qemu_fw_cfg"]
    assert stage1.late_for_platform(LATE, "aws", table) == ["vfat", "xen-netfront", "ena"]
    assert stage1.late_for_platform(LATE, "xen", table) == ["vfat", "xen-netfront"]


def test_bare_metal_an_unnamed_or_unknown_platform_loads_every_boot_module() -> None:
    table = platform_table()
    for platform in ("bare-metal", None, "", "vmware"):
        assert stage1.late_for_platform(LATE, platform, table) == LATE
    assert stage1.late_for_platform(LATE, "kvm", "") == LATE  # an image without a table


def test_the_table_names_only_modules_the_flavour_has_and_dashes_match_underscores() -> None:
    table = platform_table()
    assert "e1000" not in table  # the flavour lacks it: nothing to load
    assert stage1.late_for_platform(["xen_netfront", "virtio_net"], "xen", table) == ["xen_netfront"]


def test_our_recipe_claims_every_network_driver_for_a_platform() -> None:
    """A driver no platform claims loads on every boot; the recipe leaves only shared ones unclaimed."""
    recipe = load_kernel()
    claimed = {m for mods in recipe.platforms.values() for m in (*mods.required, *mods.optional)}
    assert "xen-netfront" in recipe.platforms["aws"].required  # Xen-based EC2 instances
    assert recipe.platforms["bare-metal"].all_drivers
    assert "xfs" not in recipe.boot_modules  # the node formats and mounts ext4 only
    assert not {"ena", "virtio_net", "xen-netfront"} - claimed
