"""What an image given with ``--image`` really is, read from the image itself in well under a second.

A publishing command must not wrap an arbitrary file in a domain definition or an upload plan, nor
publish a kvm image to AWS (its init would never read EC2 user data). So before anything is
converted or uploaded: the file must be raw or qcow2, hold a GPT with the talos-os partitions, and
its BOOT filesystem's ``grub.cfg`` names the platform it was baked for (``talos.platform=``). The
facts come from the image, not from a manifest next to it, which may be missing or stale.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bakery import gpt
from bakery.errors import BakeError
from bakery.layout import DEFAULT_LAYOUT
from bakery.tools import which

QCOW2_MAGIC = b"QFI\xfb"
PARTITIONS = tuple(spec.name for spec in DEFAULT_LAYOUT)
GRUB_CFG = "/boot/grub/grub.cfg"
_PLATFORM = re.compile(r"^\s*linux\s+/boot/A/vmlinuz\s.*?(?<!\S)talos\.platform=(\S+)", re.MULTILINE)
_HEAD = 1 << 20  # the primary GPT (34 sectors) fits well inside the first MiB


@dataclass(frozen=True)
class ImageFacts:
    """A talos-os disk image: its format and the platform its boot entry names."""

    path: Path
    format: str  # "raw" or "qcow2"
    platform: str


def not_ours(path: Path, why: str) -> BakeError:
    return BakeError(
        f"--image {path} is not a talos-os disk image ({why}): give an image that talos-bake baked "
        "(talos-bake raw writes _out/talos-PLATFORM.raw)"
    )


def image_format(path: Path) -> str:
    """``qcow2`` when the file starts with qcow2's magic, else ``raw``; unreadable is a BakeError."""
    try:
        with open(path, "rb") as f:
            return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"
    except OSError as exc:
        raise BakeError(f"cannot read --image {path}: {exc.strerror or exc}") from None


def _copy_out(path: Path, fmt: str, offset: int, length: int, dest: Path) -> None:
    """``length`` bytes at ``offset`` of the image's disk contents into ``dest``, whatever the format."""
    if fmt == "raw":
        with open(path, "rb") as src, open(dest, "wb") as out:
            src.seek(offset)
            out.write(src.read(length))
        return
    block = 1 << 20 if offset % (1 << 20) == 0 and length % (1 << 20) == 0 else 512
    # qemu-img dd's count includes the skipped blocks (qemu 7.2); a later qemu copying more is cut below
    # -U: a running domain's disk is locked by its QEMU; reading its header and boot entry is safe
    argv = [which("qemu-img"), "dd", "-U", "-f", "qcow2", "-O", "raw", f"bs={block}", f"skip={offset // block}",
            f"count={(offset + length) // block}", f"if={path}", f"of={dest}"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise not_ours(path, f"qemu-img cannot read it as qcow2: {proc.stderr.strip().splitlines()[-1:]}")
    if dest.stat().st_size > length:
        os.truncate(dest, length)


def qcow2_virtual_size(path: Path) -> int:
    """The disk size a qcow2 file stands for (its header is checked by qemu-img)."""
    proc = subprocess.run(
        [which("qemu-img"), "info", "-U", "--output=json", "-f", "qcow2", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise not_ours(path, "qemu-img cannot read its qcow2 header")
    size: int = json.loads(proc.stdout)["virtual-size"]
    return size


def read_facts(path: Path) -> ImageFacts:
    """The facts of ``path``, or a BakeError saying why it is not a talos-os image."""
    if not path.is_file():
        raise BakeError(f"--image {path} does not exist or is not a file: bake one with talos-bake raw")
    fmt = image_format(path)
    size = qcow2_virtual_size(path) if fmt == "qcow2" else path.stat().st_size
    if size < _HEAD:
        raise not_ours(path, f"it is only {size} bytes")
    with tempfile.TemporaryDirectory(prefix="talos-image-") as tmp:
        head = path
        if fmt == "qcow2":  # the GPT from its first MiB, in a sparse file of the disk's size
            head = Path(tmp) / "head"
            _copy_out(path, fmt, 0, _HEAD, head)
            os.truncate(head, size)
        try:
            parts = {p.name: p for p in gpt.read_partitions(head)}
        except BakeError:
            raise not_ours(path, "it has no valid GPT partition table") from None
        missing = [name for name in PARTITIONS if name not in parts]
        if missing:
            raise not_ours(path, f"its GPT has no {', '.join(missing)} partition")
        boot = parts["BOOT"]
        if boot.offset + boot.size > size:
            raise not_ours(path, "its BOOT partition lies past the end of the file")
        if fmt == "raw" and "?" not in str(path):
            boot_fs = f"{path}?offset={boot.offset}"  # e2fsprogs opens a filesystem inside a file
        else:
            boot_fs = str(Path(tmp) / "boot.ext4")
            _copy_out(path, fmt, boot.offset, boot.size, Path(boot_fs))
        proc = subprocess.run(
            [which("debugfs"), "-R", f"cat {GRUB_CFG}", boot_fs], capture_output=True, text=True, check=False
        )
    found = _PLATFORM.search(proc.stdout) if proc.returncode == 0 else None
    if found is None:
        raise not_ours(path, f"its BOOT filesystem has no {GRUB_CFG} with a talos.platform= boot entry")
    return ImageFacts(path=path, format=fmt, platform=found.group(1))
