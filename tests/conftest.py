"""Shared fixtures: the test image is baked once per run and shared by every test that boots it.

Every bake of the suite (in this process or a ``talos-bake`` subprocess) uses one step cache, the
user's (``TALOS_BAKE_CACHE``, else ``~/.cache/talos-bake``): the default image is baked once, other
platforms and options re-run only the BOOT filesystem and disk steps, and a run with unchanged
sources bakes in seconds. At the end of the run the cache is pruned to the most recently used
outputs of each step, so it does not grow with every change of the sources.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# First: makes grpc refuse TLS 1.2 before anything loads grpc, and generates the node API stubs
# (from node.proto) that osd, osctl and their tests import.
from talos_os.api import build as _api_build  # isort: skip

_api_build.generate()

from bakery.errors import BakeError  # noqa: E402
from bakery.image import BakeOptions, BakeResult, bake  # noqa: E402
from bakery.lock import LOCK_PATH  # noqa: E402
from bakery.options import FAST_SQUASHFS_LEVEL, default_cache  # noqa: E402
from bakery.stepcache import StepCache  # noqa: E402
from talos_os.lib.cgroups import cgroup2_mount  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# One build directory per test run; TALOS_TEST_BUILD lets concurrent runs keep apart.
BUILD = Path(os.environ.get("TALOS_TEST_BUILD", REPO / "_build" / "test")).resolve()
# The suite's bakes share this cache, subprocesses included (talos-bake reads TALOS_BAKE_CACHE).
CACHE = default_cache().resolve()
os.environ["TALOS_BAKE_CACHE"] = str(CACHE)
# Outputs kept per step when a run ends: a run keeps kvm, xen and a second epoch (3 boot and disk outputs).
KEEP_PER_STEP = 3


@pytest.fixture(scope="session", autouse=True)
def bounded_bake_cache() -> Iterator[Path]:
    """The shared step cache, pruned when a run that baked ends (the newest outputs of each step stay)."""
    started = time.time()
    yield CACHE
    cache = StepCache(CACHE)
    if any(entry.used >= started for entry in cache.entries()):
        with contextlib.suppress(BakeError):  # another run is baking: it prunes when it ends
            cache.prune(keep=KEEP_PER_STEP)


@pytest.fixture(scope="session")
def test_lock() -> Path:
    """A copy of the committed lock: the unlocked test bake may update it, never the repo's file."""
    BUILD.mkdir(parents=True, exist_ok=True)
    path = BUILD / "bake.lock"
    shutil.copy(LOCK_PATH, path)
    return path


@pytest.fixture(scope="session")
def baked_image(test_lock: Path) -> BakeResult:
    """The default image (platform kvm), baked once per test run.

    TALOS_TEST_REUSE_IMAGE=1 reuses the previous run's image (a developer's shortcut; CI bakes).
    """
    out = BUILD / "image"
    if os.environ.get("TALOS_TEST_REUSE_IMAGE") == "1" and (out / "talos-kvm.raw.manifest.json").exists():
        data = json.loads((out / "talos-kvm.raw.manifest.json").read_text())
        raw = out / "talos-kvm.raw"
        return BakeResult(
            raw=raw,
            manifest=out / "talos-kvm.raw.manifest.json",
            kernel=out / "talos-kvm-vmlinuz",
            initramfs=out / "talos-kvm-initramfs.zst",
            data=data,
        )
    shutil.rmtree(out, ignore_errors=True)
    return bake(BakeOptions(platform="kvm", out=out, lock_path=test_lock, squashfs_level=FAST_SQUASHFS_LEVEL))


# Prints "ticker ready", then "tick 1".."tick N" as the test raises N in its trigger file: the test
# decides when a supervised service's lines come.
_TICKER = """
import sys, time
trigger = sys.argv[1]
print("ticker ready", flush=True)
seen = 0
while True:
    try:
        n = int(open(trigger).read() or 0)
    except (OSError, ValueError):
        n = 0
    while seen < n:
        seen += 1
        print(f"tick {seen}", flush=True)
    time.sleep(0.02)
"""


@pytest.fixture(scope="session")
def ticker() -> Callable[[Path], list[str]]:
    """The argv of a service that prints one line per tick written to ``trigger`` (see _TICKER)."""
    return lambda trigger: [sys.executable, "-u", "-c", _TICKER, str(trigger)]


@pytest.fixture(scope="session")
def writable_cgroup2() -> Path | None:
    """The host's cgroup2 mount if this process may make groups in it (tests skip or degrade otherwise)."""
    mount = cgroup2_mount()
    if mount is None or not os.access(mount / "cgroup.procs", os.W_OK):
        return None
    probe = mount / f"talos-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return None
    return mount
