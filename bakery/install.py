"""Install a baked image onto a disk (or a disk image file): the checks, the write, the read-back.

Safety first: a target that is mounted, used as swap or held by another block device (LVM, RAID,
dm-crypt) is always refused; one that already holds something (a partition table, or any
non-zero byte in its first or last MiB) is refused unless forced; one smaller than the image is
refused with both sizes. The write keeps holes: a fresh file stays sparse, and over old data the
image's zero ranges are zeroed with BLKZEROOUT (disks) or hole punching (files), so EPHEMERAL is
blank and the init formats it on first boot. Then fsync, drop the cached pages, read back and
compare sha256. On a target larger than the image the backup GPT is moved to the real end of
the disk (``sgdisk -e``); partitions are not grown (the init grows EPHEMERAL on first boot).

The checks and the write are the node's own installer core (:mod:`talos_os.install`), which a node
booted from the live ISO runs on itself; this module adds the image file, sgdisk and BakeErrors.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bakery import gpt
from bakery.errors import BakeError
from bakery.tools import run
from talos_os.install import disk as _disk
from talos_os.install import writer as _writer
from talos_os.install.disk import (
    InstallError,
    System,
    Target,
    block_family,
    parse_mountinfo,
    read_ends,
    signatures,
)
from talos_os.install.writer import coalesce, runs, zero_range
from talos_os.lib.gpt import SECTOR

__all__ = [
    "Report",
    "System",
    "Target",
    "block_family",
    "check",
    "coalesce",
    "inspect_target",
    "install",
    "parse_mountinfo",
    "read_back_sha256",
    "read_ends",
    "reread_partitions",
    "runs",
    "signatures",
    "uses",
    "write",
    "zero_range",
]

MiB = 1 << 20
_SYSTEM = System()  # the real kernel views


@contextlib.contextmanager
def _bake_errors() -> Iterator[None]:
    """The shared installer core says InstallError; talos-bake's users see BakeError (one line)."""
    try:
        yield
    except InstallError as exc:
        raise BakeError(str(exc)) from None


@dataclass
class Report:
    """What the install did, with the figures it prints."""

    target: Target
    image_size: int
    data_bytes: int = 0
    zeroed_bytes: int = 0
    write_seconds: float = 0.0
    verify_seconds: float = 0.0
    sha256: str = ""
    gpt_moved_to: int | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self, image: Path) -> list[str]:
        t = self.target
        kind = "disk" if t.block else "file"
        zero = f", {self.zeroed_bytes // MiB} MiB zeroed" if self.zeroed_bytes else ""
        if t.fresh:
            zero = ", the rest left as holes"
        out = [
            f"wrote {image.name} to {kind} {t.path}: {self.image_size // MiB} MiB "
            f"({self.data_bytes // MiB} MiB of data{zero}) in {self.write_seconds:.1f} s",
            f"verified: the first {self.image_size // MiB} MiB read back have the image's sha256 "
            f"{self.sha256[:16]}... ({self.verify_seconds:.1f} s)",
        ]
        if self.gpt_moved_to is not None:
            out.append(
                f"moved the backup GPT to the end of the {self.gpt_moved_to // MiB} MiB {kind} "
                "(EPHEMERAL grows into the rest on first boot)"
            )
        return out + self.notes


def inspect_target(path: Path) -> Target:
    """What ``path`` is: a block device, an existing file, or a file to create."""
    with _bake_errors():
        return _disk.inspect_target(path)


def uses(target: Target, system: System = _SYSTEM) -> list[str]:
    """Why the target is in use (mounted, swap, held, a loop device's file), empty when it is free."""
    with _bake_errors():
        return _disk.uses(target, system)


def check(target: Target, image: Path, image_size: int, force: bool, system: System = _SYSTEM) -> list[str]:
    """Refuse a target that is in use, too small, the image itself, or (unless forced) not empty;
    returns what a forced target held."""
    if target.exists and os.path.samefile(target.path, image):
        raise BakeError(f"{target.path} is the image itself: name another disk or file")
    with _bake_errors():
        return _disk.check(target, image_size, force, system)


def write(
    image: Path, target: Target, progress: Callable[[int, int], None] | None = None
) -> tuple[int, int, str]:
    """Write ``image`` onto ``target``; returns (data bytes, zeroed bytes, the image's sha256)."""
    return _writer.write(runs(image), image.stat().st_size, target, progress)


def read_back_sha256(target: Target, length: int) -> str:
    """sha256 of the first ``length`` bytes as the disk has them, not as the page cache does."""
    with _bake_errors():
        return _writer.read_back_sha256(target, length)


reread_partitions = _writer.reread_partitions


def install(
    image: Path,
    disk: Path,
    *,
    force: bool = False,
    system: System = _SYSTEM,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check, write, sync, verify, and fix the backup GPT on a larger target."""
    image_size = image.stat().st_size
    partitions = gpt.read_partitions(image)  # refuse a non-GPT image before touching the disk
    target = inspect_target(disk)
    held = check(target, image, image_size, force, system)
    report = Report(target=target, image_size=image_size)
    if held:
        report.notes.append(f"overwrote (--force) what {target.path} held: {' and '.join(held)}")
    started = time.monotonic()
    report.data_bytes, report.zeroed_bytes, report.sha256 = write(image, target, progress)
    report.write_seconds = time.monotonic() - started
    started = time.monotonic()
    if read_back_sha256(target, image_size) != report.sha256:
        raise BakeError(
            f"{target.path} does not read back what was written: the disk may be failing; try another disk"
        )
    report.verify_seconds = time.monotonic() - started
    if target.size > image_size:
        run(["sgdisk", "-e", target.path], what="sgdisk -e (move the backup GPT to the end)")
        report.gpt_moved_to = target.size
        if gpt.read_partitions(target.path) != partitions or not backup_header_at_end(target):
            raise BakeError(
                f"{target.path}: the partition table is wrong after moving the backup GPT; install again"
            )
    reread_partitions(target)
    return report


def backup_header_at_end(target: Target) -> bool:
    """True when the last sector holds a valid GPT header that says it is the backup at that LBA."""
    with open(target.path, "rb") as f:
        f.seek(target.size - SECTOR)
        header = gpt.parse_header(f.read(SECTOR))
    return header is not None and header.current_lba == target.size // SECTOR - 1
