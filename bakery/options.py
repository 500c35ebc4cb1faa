"""What a bake is asked for: the options besides the recipes and the lock, and the kernel command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bakery.lock import LOCK_PATH
from talos_os import __version__
from talos_os.init.hardening import KSPP_CMDLINE

KSPP_ARGS = " ".join(KSPP_CMDLINE)
CONSOLE_ARGS = "console=tty0 console=ttyS0"
DEFAULT_EPOCH = 1704067200  # 2024-01-01, when SOURCE_DATE_EPOCH is not set
DEFAULT_DISK_SIZE = 2 << 30
# zstd level of the root squashfs: 15 is ~7% smaller than 9 and ~8x slower to bake (60 s vs 8 s
# on 2 cores); tests and iterations bake with a low level, releases with the default.
DEFAULT_SQUASHFS_LEVEL = 15
FAST_SQUASHFS_LEVEL = 3  # 2 s instead of 60 s; the image is ~15% larger


def default_cache() -> Path:
    """``$TALOS_BAKE_CACHE``, else ``~/.cache/talos-bake``: downloads and step outputs."""
    return Path(os.environ.get("TALOS_BAKE_CACHE") or Path.home() / ".cache" / "talos-bake")


@dataclass
class BakeOptions:
    """Everything a bake depends on besides the recipes and the lock."""

    platform: str = "kvm"
    config_url: str | None = None
    extra_kernel_args: str = ""
    disk_size: int = DEFAULT_DISK_SIZE
    out: Path = Path("_out")
    cache: Path = field(default_factory=default_cache)
    locked: bool = False
    flavour: str | None = None
    epoch: int = field(default_factory=lambda: int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)))
    lock_path: Path = LOCK_PATH
    quiet: bool = False
    squashfs_level: int = DEFAULT_SQUASHFS_LEVEL


def os_version() -> str:
    """The version the image reports: ``$TALOS_VERSION`` when set (a release, or a test's second
    version), else the source's ``talos_os.__version__``."""
    return os.environ.get("TALOS_VERSION") or __version__


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
