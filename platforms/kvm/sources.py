"""KVM/QEMU guest half: where a booting node finds its config.

In order: ``talos.config=URL`` on the kernel command line (an operator's explicit choice), the
fw_cfg blob ``opt/talos/config`` (``-fw_cfg name=opt/talos/config,file=...`` or libvirt's
``<sysinfo type='fwcfg'>``), a NoCloud ``cidata`` volume, and an SMBIOS ``ds=nocloud;s=URL/``
serial. Each source is a plain function with its paths as parameters so it is tested on the host.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from talos_os.lib.cmdline import Cmdline
from talos_os.lib.cmdline import parse as parse_cmdline
from talos_os.lib.fetch import ConfigRef
from talos_os.plugins.nocloud import (
    BlockDevice,
    Mounter,
    NoCloudSeed,
    find_cidata,
    find_nocloud,
    parse_seed,
    read_cidata,
)

__all__ = [
    "FW_CFG_CONFIG",
    "BlockDevice",
    "Mounter",
    "NoCloudSeed",
    "config_url_from_cmdline",
    "discover_config",
    "find_cidata",
    "parse_seed",
    "read_cidata",
    "read_fw_cfg",
]

FW_CFG_NAME = "opt/talos/config"
FW_CFG_CONFIG = Path("/sys/firmware/qemu_fw_cfg/by_name") / FW_CFG_NAME / "raw"
FW_CFG_LIMIT = 1024 * 1024
# fw_cfg sysfs reads go through a slow port-I/O interface: big reads keep the number of calls low.
FW_CFG_CHUNK = 256 * 1024


def config_url_from_cmdline(cmdline: Cmdline | str) -> str | None:
    """The ``talos.config=`` URL, if any (the last one wins, as the kernel would do)."""
    if isinstance(cmdline, str):
        cmdline = parse_cmdline(cmdline)
    url = cmdline.get("talos.config")
    return url or None


def read_fw_cfg(path: Path | str = FW_CFG_CONFIG, max_bytes: int = FW_CFG_LIMIT) -> bytes | None:
    """The fw_cfg config blob, or None if the host did not pass one (or ``qemu_fw_cfg`` is not loaded)."""
    chunks: list[bytes] = []
    size = 0
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(FW_CFG_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"fw_cfg {FW_CFG_NAME} is larger than {max_bytes} bytes")
                chunks.append(chunk)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return b"".join(chunks)


def discover_config(
    cmdline: Cmdline | str,
    *,
    fw_cfg_path: Path | str = FW_CFG_CONFIG,
    devices: Iterable[BlockDevice] | None = None,
    mount: Mounter | None = None,
    smbios_serial: str | None = None,
) -> ConfigRef | None:
    """The first config source present, in priority order; None if the host gave the node nothing."""
    url = config_url_from_cmdline(cmdline)
    if url:
        return ConfigRef(source="kernel command line talos.config=", url=url)
    data = read_fw_cfg(fw_cfg_path)
    if data:  # an empty blob is treated as absent so the next source gets its chance
        return ConfigRef(source=f"fw_cfg {FW_CFG_NAME}", data=data)
    return find_nocloud(devices, mount, smbios_serial)
