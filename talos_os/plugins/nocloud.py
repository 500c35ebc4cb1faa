"""NoCloud config sources, shared by the KVM and bare-metal platforms.

A NoCloud seed is a vfat or iso9660 volume labelled ``cidata``/``CIDATA`` holding ``user-data``
and ``meta-data`` (``virt-install --cloud-init`` and ``cloud-localds`` build one), or an SMBIOS
system serial ``ds=nocloud;s=URL/`` naming a directory that serves the same files. The node has
no udev and no blkid, so labels are read straight from each filesystem's superblock; mounting is
behind a callable so everything but the mount itself is tested on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from talos_os.lib.fetch import ConfigRef
from talos_os.lib.fslabel import probe_label

CIDATA_LABELS = ("cidata", "CIDATA")
NOCLOUD_FSTYPES = ("vfat", "iso9660")
FILE_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class BlockDevice:
    """A block device (or an image file in tests) with what its superblock says."""

    path: str
    label: str | None = None
    fstype: str | None = None


@dataclass(frozen=True)
class NoCloudData:
    """The files of a NoCloud seed; any may be missing."""

    source: str
    user_data: bytes | None = None
    meta_data: bytes | None = None
    network_config: bytes | None = None


@dataclass(frozen=True)
class NoCloudSeed:
    """A parsed ``ds=nocloud;s=URL/`` string (SMBIOS serial or command line)."""

    seedfrom: str | None
    params: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str | None:
        """URL of one seed file (``user-data``, ``meta-data``); the seed is a directory URL."""
        if not self.seedfrom:
            return None
        base = self.seedfrom if self.seedfrom.endswith("/") else self.seedfrom + "/"
        return base + name


# A mount strategy: mount the device read-only somewhere, yield the directory, unmount on exit.
Mounter = Callable[[BlockDevice], AbstractContextManager[Path]]


def list_block_devices(root: Path | str = Path("/")) -> list[BlockDevice]:
    """Every non-empty block device (disks and partitions) with its probed label, sorted by name.

    Reads ``root/sys/class/block`` and opens ``root/dev/NAME``; ``root`` is a fake tree in tests.
    """
    root = Path(root)
    devices: list[BlockDevice] = []
    try:
        names = sorted(p.name for p in (root / "sys/class/block").iterdir())
    except OSError:
        return devices
    for name in names:
        try:
            size = int((root / "sys/class/block" / name / "size").read_text().strip() or "0")
        except (OSError, ValueError):
            size = 0
        if size == 0:
            continue  # empty CD-ROM drive, unused loop device
        dev = root / "dev" / name
        probed = probe_label(dev)
        fstype, label = probed if probed else (None, None)
        devices.append(BlockDevice(str(dev), label, fstype))
    return devices


def find_cidata(devices: Iterable[BlockDevice]) -> BlockDevice | None:
    """The first vfat/iso9660 device labelled ``cidata`` or ``CIDATA`` (the labels cloud-init accepts)."""
    for dev in devices:
        if dev.label in CIDATA_LABELS and (dev.fstype is None or dev.fstype in NOCLOUD_FSTYPES):
            return dev
    return None


def _read_small(path: Path, limit: int = FILE_LIMIT) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return None
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def read_cidata(device: BlockDevice, mount: Mounter) -> NoCloudData:
    """Mount the seed volume with ``mount`` and read its files."""
    with mount(device) as top:
        return NoCloudData(
            source=f"NoCloud volume {device.path} (label {device.label})",
            user_data=_read_small(top / "user-data"),
            meta_data=_read_small(top / "meta-data"),
            network_config=_read_small(top / "network-config"),
        )


def parse_seed(text: str) -> NoCloudSeed | None:
    """Parse ``ds=nocloud;s=http://10.0.0.2:8000/;h=node1``; None if it is not a NoCloud seed.

    Keys follow cloud-init: ``s``/``seedfrom`` is the seed URL, ``h``/``local-hostname`` the
    hostname and ``i``/``instance-id`` the instance id.
    """
    parts = [p.strip() for p in text.strip().split(";") if p.strip()]
    if not parts:
        return None
    head = parts[0].lower()
    if head not in ("ds=nocloud", "ds=nocloud-net", "nocloud", "nocloud-net"):
        return None
    aliases = {"s": "seedfrom", "h": "local-hostname", "i": "instance-id"}
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        params[aliases.get(key, key)] = value
    return NoCloudSeed(params.get("seedfrom") or None, params)


def read_smbios_serial(root: Path | str = Path("/")) -> str | None:
    """The SMBIOS system serial (``/sys/class/dmi/id/product_serial``, readable by root only)."""
    try:
        value = (Path(root) / "sys/class/dmi/id/product_serial").read_text(errors="replace").strip()
    except OSError:
        return None
    return value or None


def find_nocloud(
    devices: Iterable[BlockDevice] | None,
    mount: Mounter | None,
    smbios_serial: str | None,
) -> ConfigRef | None:
    """Config from a cidata volume's ``user-data``, else the user-data URL of an SMBIOS seed."""
    if devices is not None and mount is not None:
        dev = find_cidata(devices)
        if dev is not None:
            data = read_cidata(dev, mount)
            if data.user_data is not None:
                return ConfigRef(source=data.source, data=data.user_data)
    if smbios_serial:
        seed = parse_seed(smbios_serial)
        url = seed.url("user-data") if seed else None
        if url:
            return ConfigRef(source="SMBIOS serial ds=nocloud", url=url)
    return None


# --- the real mount, used on the node only --------------------------------------------------

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8


@contextlib.contextmanager
def kernel_mount(device: BlockDevice, base: str = "/run") -> Iterator[Path]:  # pragma: no cover - needs root
    """Mount ``device`` read-only, nosuid, nodev, noexec on a fresh directory; unmount afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    target = tempfile.mkdtemp(prefix="cidata-", dir=base)
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    fstypes = [device.fstype] if device.fstype else list(NOCLOUD_FSTYPES)
    last = 0
    for fstype in fstypes:
        if libc.mount(device.path.encode(), target.encode(), fstype.encode(), flags, None) == 0:
            break
        last = ctypes.get_errno()
    else:
        os.rmdir(target)
        raise OSError(last, f"mount {device.path} on {target}: {os.strerror(last)}")
    try:
        yield Path(target)
    finally:
        libc.umount2(target.encode(), 0)
        with contextlib.suppress(OSError):
            os.rmdir(target)
