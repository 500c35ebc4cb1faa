"""Unit tests of the bakery's pure parts: layout, modules, lock, archive, ELF, boot-loader patching."""

from __future__ import annotations

import io
import itertools
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import click
import pytest

from bakery import bootloader, deb, elf, layout, policy
from bakery.cli import parse_size
from bakery.errors import BakeError
from bakery.fetch import Fetcher, normalize, wheel_name_version
from bakery.image import BakeOptions, kernel_cmdline
from bakery.initramfs import Archive, Entry
from bakery.lock import Lock, Pin
from bakery.progress import Progress
from bakery.recipe import load_kernel
from bakery.tools import which
from talos_os.kmod import ModuleError, ModuleIndex
from talos_os.lib.atomic import atomic_path
from talos_os.plugins import discover

MiB = 1 << 20

# ---- layout ------------------------------------------------------------------------------------


def test_layout_places_partitions_aligned_in_order() -> None:
    parts = layout.plan(2 << 30, "seed")
    assert [p.name for p in parts] == ["EFI", "BIOS", "BOOT", "ROOT-A", "ROOT-B", "EPHEMERAL"]
    for p in parts:
        assert p.first_lba % layout.ALIGN == 0
    for a, b in itertools.pairwise(parts):
        assert a.last_lba < b.first_lba
    assert parts[0].first_lba == 2048
    assert parts[3].size == 320 * MiB
    # EPHEMERAL takes the rest, leaving room for the backup GPT
    assert parts[-1].last_lba <= (2 << 30) // 512 - 34
    assert parts[-1].size >= 64 * MiB


def test_layout_guids_are_stable_per_seed_and_differ_between_seeds() -> None:
    a = layout.plan(2 << 30, "one")
    assert [p.guid for p in a] == [p.guid for p in layout.plan(2 << 30, "one")]
    assert {p.guid for p in a}.isdisjoint({p.guid for p in layout.plan(2 << 30, "two")})
    assert len({p.guid for p in a}) == len(a)


def test_layout_refuses_a_disk_that_is_too_small_and_names_the_fix() -> None:
    with pytest.raises(BakeError, match=r"too small.*--disk-size \d+M"):
        layout.plan(512 * MiB, "seed")
    assert layout.plan(layout.min_disk_size(), "seed")[-1].size >= 64 * MiB


def test_layout_rejects_unaligned_size() -> None:
    with pytest.raises(BakeError, match="multiple of 512"):
        layout.plan((2 << 30) + 1, "seed")


def test_sgdisk_args_pin_every_guid() -> None:
    parts = layout.plan(2 << 30, "s")
    args = layout.sgdisk_args(parts, "s")
    assert args[:3] == ["-o", "-U", layout.stable_uuid("s", "disk")]
    for p in parts:
        assert f"{p.number}:{p.guid}" in args
        assert f"{p.number}:{p.name}" in args


def test_sgdisk_writes_the_planned_table(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    with open(disk, "wb") as f:
        f.truncate(2 << 30)
    parts = layout.plan(2 << 30, "s")
    subprocess.run(
        [which("sgdisk"), *layout.sgdisk_args(parts, "s"), str(disk)], check=True, capture_output=True
    )
    out = subprocess.run(
        [which("sgdisk"), "-p", str(disk)], check=True, capture_output=True, text=True
    ).stdout
    for p in parts:
        assert any(
            line.split()[:3] == [str(p.number), str(p.first_lba), str(p.last_lba)]
            for line in out.splitlines()
        )
        assert p.name in out


# ---- kernel modules ----------------------------------------------------------------------------

MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/xen-blkfront.ko:
"""


def test_module_closure_puts_dependencies_first_once() -> None:
    index = ModuleIndex.parse(MODULES_DEP, "kernel/fs/ext4/ext4.ko\n")
    order = index.closure(["virtio_pci", "virtio_net", "ext4"])
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci")
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    assert len(order) == len(set(order))
    assert "ext4" not in order  # built in


def test_module_names_treat_dash_and_underscore_alike() -> None:
    index = ModuleIndex.parse(MODULES_DEP)
    assert index.closure(["xen_blkfront"]) == ["xen_blkfront"]
    assert index.has("xen-blkfront")


def test_unknown_module_is_a_clear_error() -> None:
    with pytest.raises(ModuleError, match="'nope' is not in this kernel"):
        ModuleIndex.parse(MODULES_DEP).closure(["nope"])


# ---- lock and fetch ----------------------------------------------------------------------------


def test_lock_round_trips(tmp_path: Path) -> None:
    lock = Lock(debs={"libc6": Pin("2.36", "libc6_2.36_amd64.deb", "ab" * 32)},
                wheels={"pyyaml": Pin("6.0", "PyYAML-6.0.whl", "cd" * 32)}, kernels={"cloud": "linux-image-x"})  # fmt: skip
    path = tmp_path / "bake.lock"
    lock.save(path)
    assert Lock.load(path) == lock
    assert Lock.load(path).dump() == lock.dump()


def test_damaged_lock_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "bake.lock"
    path.write_text("debs: {libc6: {version: 1}}\n")
    with pytest.raises(BakeError, match="damaged"):
        Lock.load(path)


def test_locked_fetch_refuses_what_the_lock_lacks_without_network(tmp_path: Path) -> None:
    fetcher = Fetcher(tmp_path, Lock(), locked=True, progress=Progress(quiet=True))
    with pytest.raises(BakeError, match="not in the lock"):
        fetcher.deb("libc6")
    with pytest.raises(BakeError, match="not in the lock"):
        fetcher.wheels(["pyyaml"])
    with pytest.raises(BakeError, match="not in the lock"):
        fetcher.kernel_package("cloud", "linux-image-cloud-amd64")


def test_cached_artifact_matching_the_lock_is_used_without_download(tmp_path: Path) -> None:
    (tmp_path / "debs").mkdir()
    blob = b"not really a deb"
    (tmp_path / "debs" / "x_1_all.deb").write_bytes(blob)
    import hashlib

    lock = Lock(debs={"x": Pin("1", "x_1_all.deb", hashlib.sha256(blob).hexdigest())})
    fetcher = Fetcher(tmp_path, lock, locked=True, progress=Progress(quiet=True))
    assert fetcher.deb("x") == tmp_path / "debs" / "x_1_all.deb"


def test_wheel_names_normalize() -> None:
    assert normalize("PyYAML") == "pyyaml"
    assert wheel_name_version("pydantic_core-2.14.6-cp311-cp311-manylinux_2_17_x86_64.whl") == (
        "pydantic-core",
        "2.14.6",
    )


# ---- deb extraction ----------------------------------------------------------------------------


def test_usr_merge_mapping() -> None:
    assert deb.usr_merged("./lib/x86_64-linux-gnu/libc.so.6") == "usr/lib/x86_64-linux-gnu/libc.so.6"
    assert deb.usr_merged("./bin/true") == "usr/bin/true"
    assert deb.usr_merged("./usr/bin/python3.11") == "usr/bin/python3.11"
    assert deb.usr_merged("./etc/hosts") == "etc/hosts"
    assert deb.usr_merged("./etc/.pwd.lock") == "etc/.pwd.lock"
    assert deb.usr_merged("./") == ""


def _make_deb(tmp_path: Path) -> Path:
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, mode in (("./bin/tool", 0o4755), ("./lib/libx.so.1", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = 4, mode
            tar.addfile(info, io.BytesIO(b"data"))
        link = tarfile.TarInfo("./lib/libx.so")
        link.type, link.linkname = tarfile.SYMTYPE, "libx.so.1"
        tar.addfile(link)
        dev = tarfile.TarInfo("./dev/null")
        dev.type = tarfile.CHRTYPE
        tar.addfile(dev)

    def member(name: str, blob: bytes) -> bytes:
        head = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode()
        return head + blob + (b"\n" if len(blob) % 2 else b"")

    raw = b"!<arch>\n" + member("debian-binary", b"2.0\n") + member("data.tar.xz", data.getvalue())
    path = tmp_path / "t_1_amd64.deb"
    path.write_bytes(raw)
    return path


def test_deb_extract_merges_usr_drops_setuid_and_devices(tmp_path: Path) -> None:
    root = tmp_path / "root"
    deb.make_merged_root(root)
    written = deb.extract(_make_deb(tmp_path), root)
    assert "usr/bin/tool" in written and "usr/lib/libx.so.1" in written
    assert not (root / "usr/bin/tool").stat().st_mode & stat.S_ISUID
    assert (root / "usr/lib/libx.so").is_symlink()
    assert not (root / "dev/null").exists()
    assert (root / "bin").is_symlink()


def test_not_a_deb_is_refused() -> None:
    with pytest.raises(BakeError, match="not a Debian package"):
        deb.ar_members(b"hello")


# ---- ELF ---------------------------------------------------------------------------------------


def test_elf_reads_needed_libraries_and_interpreter() -> None:
    info = elf.read(Path(which("zstd")).resolve())
    assert info is not None
    assert "libc.so.6" in info.needed
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert elf.read(Path(__file__)) is None


def test_resolve_in_root_keeps_absolute_links_inside(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/real.so").write_text("x")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "usr/lib/abs.so").symlink_to("/lib/real.so")
    assert elf.resolve_in_root(tmp_path, tmp_path / "usr/lib/abs.so") == tmp_path / "usr/lib/real.so"
    (tmp_path / "usr/lib/dangling.so").symlink_to("/nowhere")
    assert elf.resolve_in_root(tmp_path, tmp_path / "usr/lib/dangling.so") is None


# ---- initramfs archive --------------------------------------------------------------------------


def test_cpio_archive_is_valid_deterministic_and_carries_device_nodes(tmp_path: Path) -> None:
    arc = Archive()
    arc.add("init", Entry(stat.S_IFREG | 0o755, b"#!/usr/bin/python3.11\n"))
    arc.add("dev/console", Entry(stat.S_IFCHR | 0o600, rdev=(5, 1)))
    arc.add("usr/lib/x/y.pyc", Entry(stat.S_IFREG | 0o644, b"abc"))
    data = arc.cpio(1704067200)
    assert data == arc.cpio(1704067200)
    out = subprocess.run(["cpio", "-tv"], input=data, capture_output=True, check=True).stdout.decode()
    assert "crw-------" in out and "dev/console" in out
    assert "usr/lib/x/y.pyc" in out and "2024" in out
    names = [line.split()[-1] for line in out.splitlines()]
    assert names.index("usr") < names.index("usr/lib") < names.index("usr/lib/x/y.pyc")


# ---- boot loader --------------------------------------------------------------------------------


def test_bios_install_patches_boot_and_core_pointers(tmp_path: Path) -> None:
    disk = tmp_path / "d"
    disk.write_bytes(b"\0" * 446 + b"P" * 64 + b"\x55\xaa" + b"\0" * (8 << 20))
    boot = tmp_path / "boot.img"
    boot.write_bytes(bytes(range(256)) * 2)
    core = tmp_path / "core.img"
    core.write_bytes(b"C" * 1300)
    bootloader.install_bios(disk, boot, core, core_lba=4096, room=1 << 20)
    raw = disk.read_bytes()
    assert struct.unpack_from("<Q", raw, 0x5C)[0] == 4096
    assert raw[0x64] == 0xFF
    assert raw[446:510] == b"P" * 64 and raw[510:512] == b"\x55\xaa"  # partition table kept
    start, length, seg = struct.unpack_from("<QHH", raw, 4096 * 512 + 500)
    assert (start, length, seg) == (4097, 2, 0x820)


def test_core_image_too_large_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(b"\0" * 512)
    (tmp_path / "c").write_bytes(b"\0" * 4096)
    (tmp_path / "d").write_bytes(b"\0" * 8192)
    with pytest.raises(BakeError, match="does not fit"):
        bootloader.install_bios(tmp_path / "d", tmp_path / "b", tmp_path / "c", 2, room=1024)


def test_grub_cfg_has_both_slots_and_pygrub_readable_paths() -> None:
    cfg = bootloader.grub_cfg([("A", "a=1"), ("B", "b=2")])
    assert "linux /boot/A/vmlinuz a=1" in cfg and "initrd /boot/B/initramfs.zst" in cfg
    assert "set timeout=1" in cfg


def test_kernel_recipe_covers_exactly_the_installed_platform_plugins() -> None:
    assert set(load_kernel().platforms) == set(discover())


def test_kernel_cmdline_has_kspp_console_platform_and_options() -> None:
    line = kernel_cmdline(
        BakeOptions(platform="aws", config_url="http://x/c.yaml", extra_kernel_args="foo=1")
    )
    for word in ("init_on_alloc=1", "init_on_free=1", "slab_nomerge", "pti=on", "console=tty0", "console=ttyS0",
                 "talos.platform=aws", "talos.config=http://x/c.yaml", "foo=1", "talos.root=ROOT-A"):  # fmt: skip
        assert word in line.split()


# ---- small pieces -------------------------------------------------------------------------------


def test_parse_size() -> None:
    assert parse_size("2G") == 2 << 30
    assert parse_size("1536M") == 1536 << 20
    assert parse_size("2GiB") == 2 << 30
    with pytest.raises(click.BadParameter):
        parse_size("lots")


def test_missing_tool_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(BakeError, match=r"apt-get install squashfs-tools"):
        which("mksquashfs")


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "image.raw"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole"


def test_policy_flags_shells_and_setuid() -> None:
    found = policy.violations_in_listing(
        [("/usr/bin/bash", stat.S_IFREG | 0o755), ("/usr/bin/x", stat.S_IFREG | 0o4755),
         ("/usr/lib/sh", stat.S_IFDIR | 0o755), ("/usr/bin/ok", stat.S_IFREG | 0o755)]
    )  # fmt: skip
    assert found == ["/usr/bin/bash: forbidden program", "/usr/bin/x: setuid/setgid"]
    assert policy.mode_from_ls("-rwsr-xr-x") & stat.S_ISUID
    assert stat.S_ISDIR(policy.mode_from_ls("drwxr-xr-x"))


def test_boot_filesystem_is_byte_identical_across_builds(tmp_path: Path) -> None:
    import hashlib
    import time

    from bakery.filesystems import make_boot_fs

    digests = []
    for run_no in range(2):
        staging = tmp_path / f"staging{run_no}"
        (staging / "boot/A").mkdir(parents=True)
        (staging / "boot/A/vmlinuz").write_bytes(b"kernel" * 1000)
        (staging / "boot/grub").mkdir()
        (staging / "boot/grub/grub.cfg").write_text("set timeout=1\n")
        out = tmp_path / f"boot{run_no}.ext4"
        make_boot_fs(out, 16 << 20, staging, "6a1e7b8e-3f0c-4c55-9a43-51c0a5d1e2f4",
                     "0b7e8f52-1111-4c55-9a43-51c0a5d1e2f4", 1704067200)  # fmt: skip
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        time.sleep(1.1)  # a different wall-clock second for the second build
    assert digests[0] == digests[1]


def test_a_boot_module_missing_from_the_kernel_stops_the_bake() -> None:
    from bakery.recipe import load_kernel
    from bakery.steps import boot_module_order
    from talos_os.kmod import ModuleIndex

    recipe = load_kernel()
    index = ModuleIndex.parse("kernel/fs/isofs/isofs.ko:\n")
    with pytest.raises(BakeError, match="has no boot module"):
        boot_module_order(recipe, index, "cloud")


def test_the_menu_words_come_off_a_baked_command_line() -> None:
    """The live ISO reads slot A's line back from grub.cfg: the menu's own words must not double."""
    from bakery import bootloader

    cfg = bootloader.grub_cfg([("A", "console=ttyS0 talos.root=ROOT-A")])
    line = next(ln for ln in cfg.splitlines() if ln.strip().startswith("linux /boot/A/vmlinuz"))
    args = line.strip().removeprefix("linux /boot/A/vmlinuz ")
    assert bootloader.baked_cmdline(args, "A") == "console=ttyS0 talos.root=ROOT-A"
    assert bootloader.baked_cmdline("console=ttyS0", "A") == "console=ttyS0"  # an image baked before slots
