"""The bake: recipe -> artifacts -> root tree -> squashfs + initramfs -> bootable GPT disk image.

Each of those is a cached step (``bakery/steps.py``) named by the hash of exactly its inputs
(``bakery/pipeline.py``); ``bake()`` asks for the disk, runs only the steps whose output is not in
the cache (``bakery/stepcache.py``), then copies the results out and writes the manifest.
Everything is built as files (no mount, no loop device, no root) and every output appears under
its final name only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery import layout, steps, upgrade_bundle
from bakery.bake_options import manifest_options
from bakery.errors import BakeError
from bakery.fetch import Fetcher
from bakery.lock import Lock
from bakery.options import CONSOLE_ARGS as CONSOLE_ARGS
from bakery.options import DEFAULT_DISK_SIZE as DEFAULT_DISK_SIZE
from bakery.options import DEFAULT_EPOCH as DEFAULT_EPOCH
from bakery.options import KSPP_ARGS as KSPP_ARGS
from bakery.options import BakeOptions as BakeOptions
from bakery.options import kernel_cmdline as kernel_cmdline
from bakery.options import os_version
from bakery.pipeline import Pipeline, Step
from bakery.progress import Progress
from bakery.recipe import load_kernel, load_rootfs
from bakery.stepcache import StepCache
from bakery.steps import BakeContext
from bakery.tools import run
from talos_os.lib.atomic import atomic_path, write_atomic
from talos_os.plugins import discover

# format -> the output file of its conversion step (the step is named by the format)
CONVERSIONS = {"qcow2": "disk.qcow2", "upgrade": upgrade_bundle.OUTPUT}  # upgrade: the A/B bundle


@dataclass
class BakeResult:
    """Paths of what the bake wrote, and the figures the manifest records."""

    raw: Path
    manifest: Path
    kernel: Path
    initramfs: Path
    data: dict[str, object]
    converted: dict[str, Path] = field(default_factory=dict)


def _link_or_copy(src: Path, dest: Path) -> None:
    """A hard link into the cache where the file system allows it (the binary is large), else a copy."""
    with atomic_path(dest) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            tmp.chmod(0o755)


class _LockMoved(Exception):
    """Fetching changed the lock after the keys were computed from it: compute them again."""


def bake(opts: BakeOptions, formats: Sequence[str] = ()) -> BakeResult:
    """Bake a raw disk image for ``opts.platform`` (and ``formats``, e.g. qcow2); returns where everything went."""
    with StepCache(opts.cache.resolve()).in_use():  # no prune deletes the entries this bake uses
        return _bake(opts, formats)


def _bake(opts: BakeOptions, formats: Sequence[str]) -> BakeResult:
    progress = Progress(quiet=opts.quiet)
    opts = dataclasses.replace(opts, out=opts.out.resolve(), cache=opts.cache.resolve())
    plugins = discover()
    if opts.platform not in plugins:
        raise BakeError(f"unknown platform {opts.platform!r}: choose one of {', '.join(plugins)}")
    unknown = [f for f in formats if f not in CONVERSIONS]
    if unknown:
        raise BakeError(f"unknown image format {unknown[0]!r}: choose one of {', '.join(CONVERSIONS)}")
    layout.plan(opts.disk_size, "check")  # fail early on a disk that is too small
    kernel_recipe, rootfs_recipe = load_kernel(), load_rootfs()
    if set(kernel_recipe.platforms) != set(plugins):
        raise BakeError(
            f"kernel.yaml lists modules for platforms {sorted(kernel_recipe.platforms)} but the installed plugins "
            f"are {sorted(plugins)}: give every plugin an entry in bakery/recipes/kernel.yaml"
        )
    lock = Lock.load(opts.lock_path)
    fetcher = Fetcher(opts.cache, lock, locked=opts.locked, progress=progress)
    opts.out.mkdir(parents=True, exist_ok=True)
    _check_space(opts.out, opts.cache)
    steps.load_payloads()
    ctx = BakeContext(
        opts, kernel_recipe, rootfs_recipe, kernel_recipe.flavour(opts.flavour), lock, fetcher, progress
    )
    saved = lock.dump()
    if not ctx.lock_covers_recipes():  # keys are made of pins: get the missing ones first
        ctx.artifacts()
        saved = _save_lock(ctx, saved)

    for _attempt in range(2):
        pipeline = _pipeline(ctx, saved)
        try:
            disk = pipeline.get("disk")
            break
        except _LockMoved:
            saved = _save_lock(ctx, saved)
    else:  # pragma: no cover - the second pipeline starts from the fetched lock, which no longer moves
        raise BakeError("the lock kept changing while baking: bake again")
    kernel, initrd = pipeline.get("kernel"), pipeline.get("initramfs")

    final = opts.out / f"talos-{opts.platform}.raw"
    with progress.step("copying the image out"):
        with atomic_path(final) as tmp:
            run(["cp", "--sparse=always", disk.out / "disk.raw", tmp], what="cp")
        kernel_out = opts.out / f"talos-{opts.platform}-vmlinuz"
        initrd_out = opts.out / f"talos-{opts.platform}-initramfs.zst"
        write_atomic(kernel_out, steps.vmlinuz(kernel).read_bytes())
        write_atomic(initrd_out, (initrd.out / "initramfs.zst").read_bytes())
        if "kubernetes" in steps.PAYLOADS:  # the payload's kubectl, the operator's client for this version
            _link_or_copy(pipeline.get("kubernetes").out / "k8s", opts.out / "kubectl")
        converted = {}
        for fmt in formats:
            entry = pipeline.get(fmt)
            converted[fmt] = opts.out / f"talos-{opts.platform}.{fmt}"
            with atomic_path(converted[fmt]) as tmp:
                run(["cp", "--sparse=always", entry.out / CONVERSIONS[fmt], tmp], what="cp")

    data = _manifest(ctx, pipeline, disk.meta, final, progress, formats)
    manifest = opts.out / f"talos-{opts.platform}.raw.manifest.json"
    write_atomic(manifest, (json.dumps(data, indent=2) + "\n").encode())
    allocated = final.stat().st_blocks * 512
    progress.say(f"image: {final} ({allocated >> 20} MiB allocated of {opts.disk_size >> 20} MiB)")
    return BakeResult(final, manifest, kernel_out, initrd_out, data, converted)


def _pipeline(ctx: BakeContext, lock_text: str) -> Pipeline[BakeContext]:
    """A pipeline over the registered steps whose keys come from the lock as ``lock_text`` has it."""

    def before_run(step: Step[BakeContext]) -> None:
        if step.fetches:
            ctx.artifacts()
            if ctx.lock.dump() != lock_text:
                raise _LockMoved

    pipeline = Pipeline(steps.STEPS, ctx, StepCache(ctx.opts.cache), ctx.progress, before_run)
    ctx.key = pipeline.key
    return pipeline


def _save_lock(ctx: BakeContext, saved: str) -> str:
    """Write the lock when fetching changed it (never with --locked); returns its text."""
    text = ctx.lock.dump()
    if not ctx.opts.locked and text != saved:
        ctx.lock.save(ctx.opts.lock_path)
        ctx.progress.say(f"lock written: {ctx.opts.lock_path}")
    return text


def _manifest(
    ctx: BakeContext,
    pipeline: Pipeline[BakeContext],
    disk: Mapping[str, Any],
    final: Path,
    progress: Progress,
    formats: Sequence[str],
) -> dict[str, object]:
    """What went in: versions, sizes, partitions, each step's key (the figures travel in the disk step's record)."""
    opts, lock = ctx.opts, ctx.lock
    squashfs, boot = disk["squashfs"], disk["boot"]
    rootfs_meta, initrd, kernel = squashfs["rootfs"], boot["initramfs"], boot["kernel"]
    data: dict[str, object] = {
        "talos_os_version": os_version(),
        "platform": opts.platform,
        "image": final.name,
        "sha256": disk["sha256"],
        "size_apparent": opts.disk_size,
        "size_allocated": final.stat().st_blocks * 512,
        "kernel": {
            "package": kernel["package"],
            "version": lock.debs[kernel["package"]].version,
            "release": kernel["release"],
        },
        "cmdline": kernel_cmdline(opts),
        "options": manifest_options(opts),
        "source_date_epoch": opts.epoch,
        "squashfs_bytes": squashfs["bytes"],
        "initramfs_bytes": initrd["compressed"],
        "rootfs_component_bytes": rootfs_meta["sizes"],
        "initramfs_component_bytes": initrd["sizes"],
        "initramfs_modules": initrd["modules"],
        "partitions": [
            {
                "number": p.number,
                "name": p.name,
                "first_lba": p.first_lba,
                "last_lba": p.last_lba,
                "guid": p.guid,
            }
            for p in layout.plan(opts.disk_size, ctx.seed())
        ],
        "packages": {name: lock.debs[name].version for name in [kernel["package"], *ctx.rootfs_recipe.debs]},
        "wheels": {name: pin.version for name, pin in lock.wheels.items()},
        "steps": pipeline.record("disk", *formats),
        "timings_seconds": {k: round(v, 2) for k, v in progress.timings.items()},
    }
    for name, payload in sorted(steps.PAYLOADS.items()):
        if payload.manifest is not None:
            data[name] = payload.manifest(rootfs_meta.get("payloads", {}).get(name, {}), rootfs_meta)
    return data


def _check_space(out: Path, cache: Path) -> None:
    """A bake needs room for the image and, when steps run, their outputs: refuse early when it is not there."""
    need = 1 << 30
    cache.mkdir(parents=True, exist_ok=True)
    for where in dict.fromkeys([out, cache]):
        free = shutil.disk_usage(where).free
        if free < need:
            raise BakeError(
                f"only {free >> 20} MiB free in {where}: a bake needs about {need >> 20} MiB; free some space"
            )


def to_qcow2(raw: Path, out: Path) -> Path:
    """Convert a raw image to qcow2 next to it (atomically)."""
    with atomic_path(out) as tmp:
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp], what="qemu-img convert")
    return out
