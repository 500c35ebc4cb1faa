"""The bake's steps and exactly what each depends on: kernel, root filesystem, initramfs, squashfs,
BOOT filesystem (with GRUB and the ESP), disk assembly, and the qcow2 conversion.

``bake()`` asks the pipeline for ``disk``; with the same recipes, lock, code and options every key
is the same and nothing runs. Only ``boot`` and ``disk`` see the platform, config URL and kernel
arguments, so changing those rebuilds just them. A step that puts more into the root filesystem
(the Kubernetes payload, say) is one ``register_payload`` call in a module under
``bakery/payloads/`` (see that package's docstring).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import pkgutil
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery import bootloader, deb, initramfs, layout, rootfs
from bakery.errors import BakeError
from bakery.fetch import Fetcher, normalize
from bakery.filesystems import make_boot_fs, make_esp, make_squashfs, splice
from bakery.lock import Lock
from bakery.options import BakeOptions, kernel_cmdline, os_version
from bakery.pipeline import Step
from bakery.progress import Progress
from bakery.recipe import Flavour, KernelRecipe, RootfsRecipe
from bakery.stepcache import Entry, Staging
from bakery.tools import run
from talos_os import __version__
from talos_os.install import sparse
from talos_os.kmod import ModuleIndex
from talos_os.upgrade import grubenv

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "README.md", "talos_os", "platforms", "bakery")


@dataclass(frozen=True)
class Artifacts:
    """The verified downloads a bake builds from."""

    kernel_package: str
    kernel_deb: Path
    debs: list[Path]
    wheels: list[Path]


@dataclass
class BakeContext:
    """What the steps read: options, recipes, the lock; downloads are fetched only when a step needs them."""

    opts: BakeOptions
    kernel_recipe: KernelRecipe
    rootfs_recipe: RootfsRecipe
    flavour: Flavour
    lock: Lock
    fetcher: Fetcher
    progress: Progress
    key: Callable[[str], str] = lambda name: ""  # the pipeline's step keys (the boot and disk steps' seed)
    fetched: Artifacts | None = None

    def lock_covers_recipes(self) -> bool:
        """True when every artifact the recipes name is pinned, so keys can be computed without apt or pip."""
        kernel = self.lock.kernels.get(self.flavour.name)
        return (
            kernel is not None
            and kernel in self.lock.debs
            and all(name in self.lock.debs for name in self.rootfs_recipe.debs)
            and {normalize(w) for w in self.rootfs_recipe.wheels} <= set(self.lock.wheels)
        )

    def artifacts(self) -> Artifacts:
        """Fetch (downloads in parallel, then verify against the lock) once per bake."""
        if self.fetched is None:
            fetcher, recipe = self.fetcher, self.rootfs_recipe
            with self.progress.step("fetching packages"):
                kernel_package = fetcher.kernel_package(self.flavour.name, self.flavour.package)
                fetcher.prefetch([kernel_package, *recipe.debs])
                kernel_deb = fetcher.deb(kernel_package)
                debs = [fetcher.deb(name) for name in recipe.debs]
                wheels = fetcher.wheels(recipe.wheels)
            for update in fetcher.updates:
                self.progress.say(f"updated {update}")
            self.fetched = Artifacts(kernel_package, kernel_deb, debs, wheels)
        return self.fetched

    def kernel_package(self) -> str:
        return self.lock.kernels[self.flavour.name]

    def seed(self) -> str:
        """Pins the image's GUIDs and filesystem UUIDs: the same for the same inputs, different per image."""
        parts = [os_version(), kernel_cmdline(self.opts), self.opts.disk_size, self.opts.epoch]
        parts += [self.key(name) for name in ("kernel", "initramfs", "squashfs")]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


# ---- kernel ----------------------------------------------------------------------------------------


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


def platform_module_table(recipe: KernelRecipe, index: ModuleIndex) -> dict[str, list[str]]:
    """Per platform, the modules of its own that this flavour has, led by ``*`` when it loads every
    platform's too (``all_drivers``), so stage 1 loads only the boot modules of the platform it boots on."""
    return {
        name: ["*"] * mods.all_drivers + [m for m in (*mods.required, *mods.optional) if index.has(m)]
        for name, mods in sorted(recipe.platforms.items())
    }


def _kernel_params(ctx: BakeContext) -> object:
    package = ctx.kernel_package()
    return {
        "flavour": ctx.flavour.name,
        "package": package,
        "sha256": ctx.lock.debs[package].sha256,
        "boot_modules": ctx.kernel_recipe.boot_modules,
        "platforms": {
            name: dataclasses.asdict(mods) for name, mods in sorted(ctx.kernel_recipe.platforms.items())
        },
        "rootfs_modules": ctx.kernel_recipe.rootfs_modules,
    }


def make_kernel(ctx: BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    """The kernel and just the modules the image uses (with the whole index): a kernel root for later steps."""
    got = ctx.artifacts()
    kroot = staging.work / "kernel"
    kroot.mkdir()
    deb.make_merged_root(kroot)
    deb.extract(got.kernel_deb, kroot)
    release = got.kernel_package.removeprefix("linux-image-")
    run(["depmod", "-b", kroot, release], what="depmod")
    moddir = Path("usr/lib/modules") / release
    index = ModuleIndex.load(kroot / moddir)
    load_order, skipped = boot_module_order(ctx.kernel_recipe, index, ctx.flavour.name)
    if skipped:
        ctx.progress.say(f"flavour {ctx.flavour.name} lacks optional modules: {', '.join(skipped)}")
    rootfs_load = [m for m in ctx.kernel_recipe.rootfs_modules if index.has(m)]
    module_paths = [index.paths[m] for m in index.closure([*load_order, *rootfs_load])]
    for rel in [*module_paths, "modules.dep", "modules.builtin", "modules.builtin.modinfo", "modules.order"]:
        if (kroot / moddir / rel).exists():
            (staging.out / moddir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kroot / moddir / rel, staging.out / moddir / rel)
    (staging.out / "boot").mkdir()
    shutil.copy2(kroot / "boot" / f"vmlinuz-{release}", staging.out / "boot" / f"vmlinuz-{release}")
    staging.meta.update(
        package=got.kernel_package,
        release=release,
        load_order=load_order,
        platform_modules=platform_module_table(ctx.kernel_recipe, index),
        rootfs_load=rootfs_load,
        module_paths=module_paths,
    )


def vmlinuz(kernel: Entry) -> Path:
    return kernel.out / "boot" / f"vmlinuz-{kernel.meta['release']}"


# ---- root filesystem -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """A step whose output goes into the root filesystem: ``rootfs_args`` turns its cache entry into
    keyword arguments of ``rootfs.build``; ``manifest`` (optional) makes the payload's manifest section
    from its step's figures and the rootfs step's (``rootfs.build``'s report)."""

    step: Step[BakeContext]
    rootfs_args: Callable[[BakeContext, Entry], dict[str, Any]]
    manifest: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None


PAYLOADS: dict[str, Payload] = {}


def build_project_wheel(dest: Path, version: str = __version__) -> Path:
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
    if version != __version__:  # another version string (TALOS_VERSION): the node reports it
        init = src / "talos_os" / "__init__.py"
        init.write_text(
            init.read_text().replace(f'__version__ = "{__version__}"', f'__version__ = "{version}"')
        )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wheels = list(dest.glob("talos_os-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise BakeError(f"building the talos-os wheel failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wheels[0]


def _versions(*dists: str) -> dict[str, str]:
    found = {}
    for dist in dists:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = ""
    return found


def _rootfs_params(ctx: BakeContext) -> object:
    return {
        "recipe": dataclasses.asdict(ctx.rootfs_recipe),
        "debs": {name: ctx.lock.debs[name].sha256 for name in ctx.rootfs_recipe.debs},
        "wheels": {name: pin.sha256 for name, pin in sorted(ctx.lock.wheels.items())},
        # the host Python compiles the image's bytecode and generates the API stubs; pip builds our wheel
        "python": sys.version,
        "host": _versions("pip", "setuptools", "wheel", "grpcio-tools", "protobuf"),
        "payloads": sorted(PAYLOADS),
        "version": os_version(),
    }


def make_rootfs(ctx: BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    got = ctx.artifacts()
    kernel = inputs["kernel"]
    extra: dict[str, Any] = {}
    for name, payload in sorted(PAYLOADS.items()):
        extra |= payload.rootfs_args(ctx, inputs[name])
    report = rootfs.build(
        staging.out / "tree",
        ctx.rootfs_recipe,
        got.debs,
        got.wheels,
        build_project_wheel(staging.work / "wheel", os_version()),
        kernel.out,
        kernel.meta["release"],
        kernel.meta["module_paths"],
        load_modules=kernel.meta["rootfs_load"],
        version=os_version(),
        **extra,
    )
    for leftover in staging.out.iterdir():  # only the tree is the step's output
        if leftover.name != "tree":
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    staging.meta.update(json.loads(json.dumps(dataclasses.asdict(report), default=str)))
    staging.meta["payloads"] = {name: inputs[name].meta for name in sorted(PAYLOADS)}


# ---- initramfs and squashfs ------------------------------------------------------------------------


def make_initramfs(ctx: BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    kernel, tree = inputs["kernel"], inputs["rootfs"].out / "tree"
    release = kernel.meta["release"]
    index = ModuleIndex.load(kernel.out / "usr/lib/modules" / release)
    report = initramfs.build(
        tree,
        kernel.out,
        release,
        index,
        kernel.meta["load_order"],
        staging.out / "initramfs.zst",
        ctx.opts.epoch,
        platform_modules=kernel.meta["platform_modules"],
    )
    staging.meta.update(dataclasses.asdict(report))


def make_root_squashfs(ctx: BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    out = staging.out / "root.sqsh"
    make_squashfs(inputs["rootfs"].out / "tree", out, ctx.opts.epoch, ctx.opts.squashfs_level)
    # the rootfs figures travel on to the manifest (a warm bake reads no rootfs entry)
    staging.meta.update(bytes=out.stat().st_size, rootfs=inputs["rootfs"].meta)


# ---- BOOT filesystem, disk, conversions ------------------------------------------------------------

GRUB_TOOLS = ("grub-mkimage", "mkfs.ext4", "debugfs", "mkfs.vfat", "mmd", "mcopy")


def _boot_params(ctx: BakeContext) -> object:
    parts = {p.name: p for p in layout.plan(ctx.opts.disk_size, ctx.seed())}
    return {
        "cmdline": [kernel_cmdline(ctx.opts, "A"), kernel_cmdline(ctx.opts, "B")],
        "seed": ctx.seed(),
        "sizes": {"BOOT": parts["BOOT"].size, "EFI": parts["EFI"].size},
        "epoch": ctx.opts.epoch,
        "version": os_version(),
    }


def make_boot(ctx: BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    """BOOT (ext4: kernel, initramfs, grub.cfg), the ESP (GRUB's EFI binary) and GRUB's BIOS core image."""
    seed, opts = ctx.seed(), ctx.opts
    parts = {p.name: p for p in layout.plan(opts.disk_size, seed)}
    boot_uuid = layout.stable_uuid(seed, "BOOT-fs")
    _boot_img, core_img, efi = bootloader.make_images(staging.work, boot_uuid)
    shutil.move(core_img, staging.out / "core.img")
    tree = staging.work / "boot"
    (tree / "boot/grub").mkdir(parents=True)
    (tree / "boot/A").mkdir()
    (tree / "boot/B").mkdir()
    shutil.copy(vmlinuz(inputs["kernel"]), tree / "boot/A/vmlinuz")
    shutil.copy(inputs["initramfs"].out / "initramfs.zst", tree / "boot/A/initramfs.zst")
    (tree / "boot/grub/grub.cfg").write_text(
        bootloader.grub_cfg([("A", kernel_cmdline(opts, "A")), ("B", kernel_cmdline(opts, "B"))])
    )
    # GRUB's environment block: slot A is the good default (talos_os.upgrade.slots)
    (tree / "boot/grub/grubenv").write_bytes(
        grubenv.render({"saved_entry": "talos-A", "talos_A": f"good:{os_version()}"})
    )
    make_boot_fs(staging.out / "boot.ext4", parts["BOOT"].size, tree, boot_uuid,
                 layout.stable_uuid(seed, "BOOT-hash"), opts.epoch)  # fmt: skip
    make_esp(staging.out / "esp.vfat", parts["EFI"].size, efi,
             layout.stable_uuid(seed, "EFI-fs")[:8].upper(), opts.epoch)  # fmt: skip
    kernel = inputs["kernel"].meta
    staging.meta.update(kernel={"package": kernel["package"], "release": kernel["release"]},
                        initramfs=inputs["initramfs"].meta)  # fmt: skip


def _disk_params(ctx: BakeContext) -> object:
    return {"disk_size": ctx.opts.disk_size, "seed": ctx.seed()}


def make_disk(ctx: BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    """The GPT disk: partitions at their pinned GUIDs, filesystems spliced in, GRUB for BIOS."""
    seed, size = ctx.seed(), ctx.opts.disk_size
    parts = {p.name: p for p in layout.plan(size, seed)}
    boot = inputs["boot"].out
    disk = staging.out / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(size)
    run(["sgdisk", *layout.sgdisk_args(list(parts.values()), seed), disk], what="sgdisk")
    splice(disk, boot / "esp.vfat", parts["EFI"].offset, parts["EFI"].size)
    splice(disk, boot / "boot.ext4", parts["BOOT"].offset, parts["BOOT"].size)
    splice(disk, inputs["squashfs"].out / "root.sqsh", parts["ROOT-A"].offset, parts["ROOT-A"].size)
    bootloader.install_bios(disk, bootloader.GRUB_LIB / "i386-pc" / "boot.img", boot / "core.img",
                            parts["BIOS"].first_lba, parts["BIOS"].size)  # fmt: skip
    figures = {"boot": inputs["boot"].meta, "squashfs": inputs["squashfs"].meta}  # on to the manifest
    staging.meta.update(sha256=sparse.sha256_hex(disk), **figures)


def make_qcow2(ctx: BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", inputs["disk"].out / "disk.raw",
         staging.out / "disk.qcow2"], what="qemu-img convert")  # fmt: skip


# ---- the registry ----------------------------------------------------------------------------------


def _epoch(ctx: BakeContext) -> object:
    return {"epoch": ctx.opts.epoch}


def _squashfs_params(ctx: BakeContext) -> object:
    return {"epoch": ctx.opts.epoch, "level": ctx.opts.squashfs_level}


STEPS: dict[str, Step[BakeContext]] = {
    step.name: step
    for step in (
        Step("kernel", make_kernel, params=_kernel_params, code=("bakery.steps", "bakery.deb", "talos_os.kmod"),
             tools=("depmod",), fetches=True),
        Step("rootfs", make_rootfs, needs=("kernel",), params=_rootfs_params, code=("bakery.steps",),
             files=tuple(REPO_ROOT / name for name in PROJECT_FILES), fetches=True),
        Step("initramfs", make_initramfs, needs=("kernel", "rootfs"), params=_epoch,
             code=("bakery.steps", "bakery.initramfs", "bakery.elf", "bakery.deb", "talos_os.kmod"), tools=("zstd",)),
        Step("squashfs", make_root_squashfs, needs=("rootfs",), params=_squashfs_params,
             code=("bakery.steps", "bakery.filesystems"), tools=("mksquashfs",)),
        Step("boot", make_boot, needs=("kernel", "initramfs"), params=_boot_params,
             code=("bakery.steps", "bakery.bootloader", "bakery.filesystems", "bakery.layout",
                   "talos_os.upgrade.grubenv"), tools=GRUB_TOOLS,
             files=(bootloader.GRUB_LIB / "i386-pc", bootloader.GRUB_LIB / "x86_64-efi")),
        Step("disk", make_disk, needs=("boot", "squashfs"), params=_disk_params,
             code=("bakery.steps", "bakery.filesystems", "bakery.layout", "bakery.bootloader"), tools=("sgdisk",),
             files=(bootloader.GRUB_LIB / "i386-pc" / "boot.img",)),
        Step("qcow2", make_qcow2, needs=("disk",), code=("bakery.steps",), tools=("qemu-img",)),
    )
}  # fmt: skip


def register(step: Step[BakeContext]) -> None:
    """Add a step (or replace one of the same name)."""
    STEPS[step.name] = step


def register_payload(
    step: Step[BakeContext],
    rootfs_args: Callable[[BakeContext, Entry], dict[str, Any]],
    manifest: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Add a step whose output goes into the root filesystem: the rootfs step then needs it (so its key
    is part of the rootfs key) and passes ``rootfs_args(ctx, entry)`` to ``rootfs.build``."""
    register(step)
    PAYLOADS[step.name] = Payload(step, rootfs_args, manifest)
    rootfs_step = STEPS["rootfs"]
    if step.name not in rootfs_step.needs:
        STEPS["rootfs"] = dataclasses.replace(rootfs_step, needs=(*rootfs_step.needs, step.name))


def load_payloads() -> None:
    """Import every module of ``bakery.payloads``: each registers its step(s) when imported."""
    package = importlib.import_module("bakery.payloads")
    for info in pkgutil.iter_modules(package.__path__, prefix="bakery.payloads."):
        importlib.import_module(info.name)


__all__ = ["STEPS", "BakeContext", "Payload", "register", "register_payload"]
