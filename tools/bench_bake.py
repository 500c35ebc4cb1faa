"""Bake figures for `make bench`, as medians: a bake of unchanged inputs, a bake that changes only the
platform, config URL or kernel arguments (targets: <= 5 s and <= 10 s), and the cold download of
every artifact the lock names (parallel, into an empty download cache).

Each changed bake uses a config URL or kernel argument never used before, so its BOOT filesystem and
disk steps really run; their outputs are deleted afterwards so the bench does not fill the cache.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bakery.errors import BakeError
from bakery.fetch import DOWNLOAD_WORKERS, Fetcher
from bakery.image import BakeOptions, BakeResult, bake
from bakery.lock import LOCK_PATH, Lock
from bakery.lockguard import guarded
from bakery.progress import Progress
from bakery.recipe import load_kernel, load_rootfs
from bakery.stepcache import StepCache

RUNS = 3


def release_image(out: Path) -> BakeResult:
    """The image a bench boots: platform kvm at release settings, into ``out`` (the step cache makes
    a repeat a copy); the lock is checked, never updated."""
    image, _moved = guarded(
        bake, BakeOptions(platform="kvm", out=out, quiet=True), update_lock=False, say=print
    )
    return image


def _timed(opts: BakeOptions) -> tuple[float, BakeResult, dict[str, dict[str, Any]]]:
    start = time.monotonic()
    result = bake(opts)
    seconds = time.monotonic() - start
    steps: dict[str, dict[str, Any]] = json.loads(result.manifest.read_text())["steps"]
    return seconds, result, steps


def _ran(steps: dict[str, dict[str, Any]]) -> str:
    return ", ".join(name for name, step in steps.items() if not step["cached"]) or "none"


def _median(label: str, seconds: list[float], ran: str, target: float) -> None:
    figures = ", ".join(f"{s:.1f}" for s in seconds)
    print(
        f"bake, {label}: median {statistics.median(seconds):.1f} s of {len(seconds)} [{figures}] "
        f"(steps run: {ran}; target <= {target:.0f} s)"
    )


def report(out: Path) -> None:
    """Print the bake pipeline's figures; bakes into ``out`` with a scratch copy of the lock."""
    with tempfile.TemporaryDirectory(prefix="talos-bench-lock-") as tmp:
        lock = Path(tmp) / "bake.lock"
        shutil.copyfile(LOCK_PATH, lock)
        base = BakeOptions(platform="kvm", out=out, lock_path=lock, quiet=True)
        first, _result, steps = _timed(base)
        print(f"bake, first in this bench: {first:.1f} s (steps run: {_ran(steps)})")

        warm = [_timed(base) for _ in range(RUNS)]
        _median("same inputs", [s for s, _r, _st in warm], _ran(warm[-1][2]), 5)

        nonce = uuid.uuid4().hex[:12]
        changes: list[dict[str, Any]] = [
            {"platform": "aws", "config_url": f"http://127.0.0.1:1/{nonce}.yaml"},
            {"platform": "xen", "extra_kernel_args": f"bench.nonce={nonce}"},
            {"platform": "kvm", "config_url": f"http://127.0.0.1:2/{nonce}.yaml"},
        ]
        changed = [_timed(dataclasses.replace(base, **change)) for change in changes]
        _median("only platform, config URL or kernel arguments changed", [s for s, _r, _st in changed],
                " / ".join(_ran(st) for _s, _r, st in changed), 10)  # fmt: skip
        cache = StepCache(base.cache)
        for _s, _r, st in changed:  # the bench's one-off outputs
            for name in ("boot", "disk"):
                cache.discard(name, st[name]["key"])
        cold_fetch(lock, base.cache)


def cold_fetch(lock_path: Path, cache: Path) -> None:
    """Download every deb and wheel the lock names into an empty download cache, as a first bake does."""
    lock = Lock.load(lock_path)
    flavour = load_kernel().flavour(None)
    debs = [lock.kernels[flavour.name], *load_rootfs().debs]
    with tempfile.TemporaryDirectory(dir=cache, prefix=".bench-fetch-") as tmp:
        fetcher = Fetcher(Path(tmp), lock, locked=True, progress=Progress(quiet=True))
        start = time.monotonic()
        try:
            fetcher.prefetch(debs)
            files = [fetcher.deb(name) for name in debs] + fetcher.wheels(load_rootfs().wheels)
        except BakeError as exc:
            print(f"cold download: not measured ({exc})")
            return
        seconds = time.monotonic() - start
        size = sum(f.stat().st_size for f in files)
    print(
        f"cold download: {len(files)} files, {size / 2**20:.1f} MiB in {seconds:.1f} s "
        f"(at most {DOWNLOAD_WORKERS} batches at once, verified against the lock)"
    )
