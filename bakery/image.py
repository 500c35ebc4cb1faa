"""The bake: recipe -> artifacts -> root tree -> squashfs + initramfs -> bootable GPT disk image.

Read ``bake()`` top to bottom for the whole flow. Everything is built as files (no mount, no
loop device, no root) and every output appears under its final name only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bakery import bootloader, deb, initramfs, layout, rootfs
from bakery.atomic import atomic_path, write_atomic
from bakery.errors import BakeError
from bakery.fetch import Fetcher, sha256_of
from bakery.lock import LOCK_PATH, Lock
from bakery.progress import Progress
from bakery.recipe import KernelRecipe, load_kernel, load_rootfs
from bakery.tools import run
from talos_os import __version__
from talos_os.init.hardening import KSPP_CMDLINE
from talos_os.kmod import ModuleIndex
from talos_os.plugins import discover

KSPP_ARGS = " ".join(KSPP_CMDLINE)
CONSOLE_ARGS = "console=tty0 console=ttyS0"
DEFAULT_EPOCH = 1704067200  # 2024-01-01, when SOURCE_DATE_EPOCH is not set
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DISK_SIZE = 2 << 30


@dataclass
class BakeOptions:
    """Everything a bake depends on besides the recipes and the lock."""

    platform: str = "kvm"
    config_url: str | None = None
    extra_kernel_args: str = ""
    disk_size: int = DEFAULT_DISK_SIZE
    out: Path = Path("_out")
    cache: Path = Path.home() / ".cache" / "talos-bake"
    locked: bool = False
    flavour: str | None = None
    epoch: int = field(default_factory=lambda: int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)))
    lock_path: Path = LOCK_PATH
    quiet: bool = False


@dataclass
class BakeResult:
    """Paths of what the bake wrote, and the figures the manifest records."""

    raw: Path
    manifest: Path
    kernel: Path
    initramfs: Path
    data: dict[str, object]


def kernel_cmdline(opts: BakeOptions, slot: str = "A") -> str:
    """The kernel command line written into the boot entries."""
    words = [
        KSPP_ARGS,
        CONSOLE_ARGS,
        "printk.devkmsg=on",
        f"talos.platform={opts.platform}",
        f"talos.root=ROOT-{slot}",
    ]
    if opts.config_url:
        words.append(f"talos.config={opts.config_url}")
    if opts.extra_kernel_args.strip():
        words.append(opts.extra_kernel_args.strip())
    return " ".join(words)


def boot_module_order(recipe: KernelRecipe, index: ModuleIndex, flavour: str) -> tuple[list[str], list[str]]:
    """Modules the initramfs loads, in order, and the optional ones this flavour lacks."""
    missing = [m for m in recipe.boot_modules if not index.has(m)]
    if missing:  # a silently dropped boot module is a node that cannot find its disk or config
        raise BakeError(
            f"kernel flavour {flavour!r} has no boot module {', '.join(map(repr, missing))}: "
            "fix the name in bakery/recipes/kernel.yaml or choose another --kernel-flavour"
        )
    order: list[str] = list(recipe.boot_modules)
    skipped: list[str] = []
    for name, mods in recipe.platforms.items():
        for m in mods.required:
            if not index.has(m):
                raise BakeError(
                    f"kernel flavour {flavour!r} has no module {m!r}, which platform {name} needs: "
                    "choose another --kernel-flavour"
                )
            order.append(m)
        for m in mods.optional:
            (order if index.has(m) else skipped).append(m)
    return list(dict.fromkeys(order)), skipped


PROJECT_FILES = ("pyproject.toml", "README.md", "talos_os", "platforms", "bakery")


def build_project_wheel(dest: Path) -> Path:
    """Our own wheel, built without network (no build isolation) from a clean copy of the sources,
    so setuptools' build/ directory neither lands in the checkout nor leaks stale files into the image."""
    if not (REPO_ROOT / "pyproject.toml").exists():
        raise BakeError(f"no pyproject.toml at {REPO_ROOT}: talos-bake must run from a source checkout")
    src = dest / "src"
    for name in PROJECT_FILES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(
                REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wheels = list(dest.glob("talos_os-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise BakeError(f"building the talos-os wheel failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wheels[0]


def splice(disk: Path, image: Path, offset: int, limit: int) -> None:
    """Copy ``image`` into ``disk`` at ``offset``, skipping zero blocks so the disk stays sparse."""
    size = image.stat().st_size
    if size > limit:
        raise BakeError(f"{image.name} ({size >> 20} MiB) does not fit its partition ({limit >> 20} MiB)")
    block = 1 << 16
    with open(image, "rb") as src, open(disk, "r+b") as dst:
        pos = 0
        while chunk := src.read(block):
            if chunk.count(0) != len(chunk):
                dst.seek(offset + pos)
                dst.write(chunk)
            pos += len(chunk)


def make_esp(path: Path, size: int, efi_binary: Path, volume_id: str, epoch: int) -> None:
    """FAT EFI system partition holding only GRUB's EFI binary (the kernel stays on BOOT)."""
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}
    run(["mkfs.vfat", "--invariant", "-i", volume_id, "-n", "EFI", "-C", path, str(size // 1024)], env=env,
        what="mkfs.vfat")  # fmt: skip
    run(["mmd", "-i", path, "::/EFI", "::/EFI/BOOT"], env=env, what="mmd")
    os.utime(efi_binary, (epoch, epoch))
    run(["mcopy", "-m", "-i", path, efi_binary, "::/EFI/BOOT/BOOTX64.EFI"], env=env, what="mcopy")


def make_boot_fs(path: Path, size: int, staging: Path, fs_uuid: str, hash_seed: str, epoch: int) -> None:
    """ext4 BOOT filesystem (GRUB and pygrub both read it) populated from ``staging``."""
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(staging, (epoch, epoch))
    run(["mkfs.ext4", "-q", "-F", "-L", "BOOT", "-U", fs_uuid, "-E", f"hash_seed={hash_seed},root_owner=0:0",
         "-O", "^has_journal,^metadata_csum_seed", "-m", "0", "-d", staging, path, f"{size // 1024}k"],
        env={"E2FSPROGS_FAKE_TIME": str(epoch)}, what="mkfs.ext4")  # fmt: skip
    # mkfs.ext4 -d copies each file's ctime (utime cannot set it) and reading a directory moves its
    # atime: pin all three times afterwards.
    paths = [
        "/",
        "/lost+found",
        *sorted(
            "/" + str(Path(d, n).relative_to(staging))
            for d, dirs, files in os.walk(staging)
            for n in dirs + files
        ),
    ]
    script = path.with_suffix(".debugfs")
    script.write_text(
        "".join(
            f"set_inode_field {p} {field} @{epoch}\n" for p in paths for field in ("ctime", "atime", "mtime")
        )
    )
    run(["debugfs", "-w", "-f", script, path], env={"E2FSPROGS_FAKE_TIME": str(epoch)}, what="debugfs")


def make_squashfs(tree: Path, out: Path, epoch: int) -> None:
    """Read-only root: zstd, root-owned, fixed timestamps (mksquashfs is reproducible by default)."""
    run(["mksquashfs", tree, out, "-noappend", "-comp", "zstd", "-Xcompression-level", "15", "-b", "256K",
         "-all-root", "-all-time", str(epoch), "-mkfs-time", str(epoch), "-no-xattrs", "-quiet", "-no-progress"],
        what="mksquashfs")  # fmt: skip


def bake(opts: BakeOptions) -> BakeResult:
    """Bake a raw disk image for ``opts.platform``; returns where everything went."""
    progress = Progress(quiet=opts.quiet)
    opts = dataclasses.replace(opts, out=opts.out.resolve(), cache=opts.cache.resolve())
    plugins = discover()
    if opts.platform not in plugins:
        raise BakeError(f"unknown platform {opts.platform!r}: choose one of {', '.join(plugins)}")
    layout.plan(opts.disk_size, "check")  # fail early on a disk that is too small
    kernel_recipe, rootfs_recipe = load_kernel(), load_rootfs()
    if set(kernel_recipe.platforms) != set(plugins):
        raise BakeError(
            f"kernel.yaml lists modules for platforms {sorted(kernel_recipe.platforms)} but the installed plugins "
            f"are {sorted(plugins)}: give every plugin an entry in bakery/recipes/kernel.yaml"
        )
    flavour = kernel_recipe.flavour(opts.flavour)
    lock = Lock.load(opts.lock_path)
    before = lock.dump()
    fetcher = Fetcher(opts.cache, lock, locked=opts.locked, progress=progress)
    opts.out.mkdir(parents=True, exist_ok=True)
    _check_space(opts.out, opts.disk_size)

    with progress.step("fetching packages"):
        kernel_pkg = fetcher.kernel_package(flavour.name, flavour.package)
        kernel_deb = fetcher.deb(kernel_pkg)
        debs = []
        for i, name in enumerate(rootfs_recipe.debs, start=1):
            debs.append(fetcher.deb(name))
            progress.count("debian packages", i, len(rootfs_recipe.debs))
        wheels = fetcher.wheels(rootfs_recipe.wheels)
    for update in fetcher.updates:
        progress.say(f"updated {update}")
    if not opts.locked and lock.dump() != before:
        lock.save(opts.lock_path)
        progress.say(f"lock written: {opts.lock_path}")

    with tempfile.TemporaryDirectory(dir=opts.out, prefix=".bake-") as tmp:
        work = Path(tmp)
        with progress.step("kernel"):
            kroot = work / "kernel"
            kroot.mkdir()
            deb.make_merged_root(kroot)
            deb.extract(kernel_deb, kroot)
            version = kernel_pkg.removeprefix("linux-image-")
            run(["depmod", "-b", kroot, version], what="depmod")
            index = ModuleIndex.load(kroot / "usr/lib/modules" / version)
            load_order, skipped = boot_module_order(kernel_recipe, index, flavour.name)
            if skipped:
                progress.say(f"flavour {flavour.name} lacks optional modules: {', '.join(skipped)}")
            rootfs_modules = index.closure(m for m in kernel_recipe.rootfs_modules if index.has(m))
            module_paths = [index.paths[m] for m in index.closure([*load_order, *rootfs_modules])]
        with progress.step("root filesystem"):
            project_wheel = build_project_wheel(work / "wheel")
            tree = work / "rootfs"
            report = rootfs.build(
                tree,
                rootfs_recipe,
                debs,
                wheels,
                project_wheel,
                kroot,
                version,
                module_paths,
                load_modules=[m for m in kernel_recipe.rootfs_modules if index.has(m)],
            )
        with progress.step("initramfs"):
            initrd = work / "initramfs.zst"
            ireport = initramfs.build(tree, kroot, version, index, load_order, initrd, opts.epoch)
        with progress.step("squashfs"):
            squash = work / "root.sqsh"
            make_squashfs(tree, squash, opts.epoch)
        vmlinuz = kroot / "boot" / f"vmlinuz-{version}"

        seed = hashlib.sha256(
            json.dumps([__version__, lock.dump(), opts.platform, kernel_cmdline(opts), opts.disk_size, opts.epoch,
                        sha256_of(squash), sha256_of(initrd)]).encode()
        ).hexdigest()  # fmt: skip
        with progress.step("disk image"):
            parts = {p.name: p for p in layout.plan(opts.disk_size, seed)}
            boot_uuid = layout.stable_uuid(seed, "BOOT-fs")
            boot_img, core_img, efi = bootloader.make_images(work, boot_uuid)
            staging = work / "boot"
            (staging / "boot/grub").mkdir(parents=True)
            (staging / "boot/A").mkdir()
            (staging / "boot/B").mkdir()
            shutil.copy(vmlinuz, staging / "boot/A/vmlinuz")
            shutil.copy(initrd, staging / "boot/A/initramfs.zst")
            (staging / "boot/grub/grub.cfg").write_text(
                bootloader.grub_cfg([("A", kernel_cmdline(opts, "A")), ("B", kernel_cmdline(opts, "B"))])
            )
            boot_fs = work / "boot.ext4"
            make_boot_fs(boot_fs, parts["BOOT"].size, staging, boot_uuid, layout.stable_uuid(seed, "BOOT-hash"),
                         opts.epoch)  # fmt: skip
            esp = work / "esp.vfat"
            make_esp(esp, parts["EFI"].size, efi, layout.stable_uuid(seed, "EFI-fs")[:8].upper(), opts.epoch)

            final = opts.out / f"talos-{opts.platform}.raw"
            with atomic_path(final) as disk:
                with open(disk, "wb") as f:
                    f.truncate(opts.disk_size)
                run(["sgdisk", *layout.sgdisk_args(list(parts.values()), seed), disk], what="sgdisk")
                splice(disk, esp, parts["EFI"].offset, parts["EFI"].size)
                splice(disk, boot_fs, parts["BOOT"].offset, parts["BOOT"].size)
                splice(disk, squash, parts["ROOT-A"].offset, parts["ROOT-A"].size)
                bootloader.install_bios(disk, boot_img, core_img, parts["BIOS"].first_lba, parts["BIOS"].size)
            kernel_out = opts.out / f"talos-{opts.platform}-vmlinuz"
            initrd_out = opts.out / f"talos-{opts.platform}-initramfs.zst"
            write_atomic(kernel_out, vmlinuz.read_bytes())
            write_atomic(initrd_out, initrd.read_bytes())

        allocated = final.stat().st_blocks * 512
        data: dict[str, object] = {
            "talos_os_version": __version__,
            "platform": opts.platform,
            "image": final.name,
            "sha256": sha256_of(final),
            "size_apparent": opts.disk_size,
            "size_allocated": allocated,
            "kernel": {"package": kernel_pkg, "version": lock.debs[kernel_pkg].version, "release": version},
            "cmdline": kernel_cmdline(opts),
            "source_date_epoch": opts.epoch,
            "squashfs_bytes": squash.stat().st_size,
            "initramfs_bytes": initrd.stat().st_size,
            "rootfs_component_bytes": report.sizes,
            "initramfs_component_bytes": ireport.sizes,
            "initramfs_modules": ireport.modules,
            "partitions": [
                {
                    "number": p.number,
                    "name": p.name,
                    "first_lba": p.first_lba,
                    "last_lba": p.last_lba,
                    "guid": p.guid,
                }
                for p in parts.values()
            ],
            "packages": {name: lock.debs[name].version for name in [kernel_pkg, *rootfs_recipe.debs]},
            "wheels": {name: pin.version for name, pin in lock.wheels.items()},
            "timings_seconds": {k: round(v, 2) for k, v in progress.timings.items()},
        }
        manifest = opts.out / f"talos-{opts.platform}.raw.manifest.json"
        write_atomic(manifest, (json.dumps(data, indent=2) + "\n").encode())
    progress.say(f"image: {final} ({allocated >> 20} MiB allocated of {opts.disk_size >> 20} MiB)")
    return BakeResult(raw=final, manifest=manifest, kernel=kernel_out, initramfs=initrd_out, data=data)


def _check_space(out: Path, disk_size: int) -> None:
    """A bake needs room for the work tree and the (sparse) image: refuse early when it is not there."""
    free = shutil.disk_usage(out).free
    need = 1 << 30
    if free < need:
        raise BakeError(
            f"only {free >> 20} MiB free in {out}: a bake needs about {need >> 20} MiB; free some space"
        )


def to_qcow2(raw: Path, out: Path) -> Path:
    """Convert a raw image to qcow2 next to it (atomically)."""
    with atomic_path(out) as tmp:
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp], what="qemu-img convert")
    return out
