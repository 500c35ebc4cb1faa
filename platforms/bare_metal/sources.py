"""Bare-metal guest half: config from ``talos.config=URL`` (PXE/iPXE) or a NoCloud seed.

One PXE menu serves a whole rack, so the URL may name the machine through variables filled in
on the node: ``${uuid}`` (SMBIOS system UUID), ``${mac}`` (the boot NIC), ``${hostname}`` and
``${serial}`` (SMBIOS serial), e.g. ``talos.config=http://10.0.0.1/configs/${mac}.yaml``.
An unknown variable or one with no value is an error: fetching a wrong URL would fail later
with a far less helpful message.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from talos_os.lib.cmdline import Cmdline
from talos_os.lib.cmdline import parse as parse_cmdline
from talos_os.lib.fetch import ConfigRef
from talos_os.plugins.nocloud import BlockDevice, Mounter, find_nocloud

VARIABLES = ("uuid", "mac", "hostname", "serial")
_VAR = re.compile(r"\$\{([^}]*)\}")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class SubstitutionError(ValueError):
    """A ``${...}`` in the config URL that cannot be filled in."""


@dataclass(frozen=True)
class NodeFacts:
    """What the URL variables are filled with; None where the node could not tell."""

    uuid: str | None = None
    mac: str | None = None
    hostname: str | None = None
    serial: str | None = None


def _read(path: Path) -> str | None:
    try:
        value = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return value or None


def bootif_mac(cmdline: Cmdline) -> str | None:
    """The boot NIC from ``BOOTIF=01-aa-bb-cc-dd-ee-ff`` (pxelinux ``IPAPPEND 2``, iPXE scripts)."""
    value = cmdline.get("BOOTIF")
    if not value:
        return None
    value = value.lower().replace("-", ":")
    if value.startswith("01:"):  # ARP hardware type 1 (Ethernet)
        value = value[3:]
    return value if _MAC.match(value) else None


def primary_mac(root: Path | str = Path("/")) -> str | None:
    """The MAC of the first physical NIC that is up, else of the first physical NIC (by name)."""
    net = Path(root) / "sys/class/net"
    try:
        names = sorted(p.name for p in net.iterdir())
    except OSError:
        return None
    physical: list[tuple[str, str]] = []
    for name in names:
        iface = net / name
        if name == "lo" or not (iface / "device").exists():
            continue  # virtual (bridge, veth, ...) interfaces have no backing device
        mac = _read(iface / "address")
        if mac and _MAC.match(mac.lower()) and mac != "00:00:00:00:00:00":
            physical.append((name, mac.lower()))
    for name, mac in physical:
        if _read(net / name / "operstate") == "up":
            return mac
    return physical[0][1] if physical else None


def node_facts(root: Path | str = Path("/"), cmdline: Cmdline | str | None = None) -> NodeFacts:
    """Gather the URL variables from sysfs/procfs under ``root`` (a fake tree in tests)."""
    root = Path(root)
    if cmdline is None:
        cmdline = _read(root / "proc/cmdline") or ""
    if isinstance(cmdline, str):
        cmdline = parse_cmdline(cmdline)
    uuid = _read(root / "sys/class/dmi/id/product_uuid")
    return NodeFacts(
        uuid=uuid.lower() if uuid else None,
        mac=bootif_mac(cmdline) or primary_mac(root),
        hostname=_read(root / "proc/sys/kernel/hostname"),
        serial=_read(root / "sys/class/dmi/id/product_serial"),
    )


def substitute(url: str, facts: NodeFacts | Mapping[str, str | None]) -> str:
    """Replace ``${uuid}``, ``${mac}``, ``${hostname}`` and ``${serial}`` in ``url`` (values URL-quoted)."""
    values = asdict(facts) if isinstance(facts, NodeFacts) else dict(facts)

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in VARIABLES:
            raise SubstitutionError(
                f"unknown variable ${{{name}}} in {url!r}: use one of {', '.join(VARIABLES)}"
            )
        value = values.get(name)
        if value is None or value == "" or value == "(none)":
            raise SubstitutionError(f"cannot fill ${{{name}}} in {url!r}: the node does not know its {name}")
        return urllib.parse.quote(str(value), safe=":")

    return _VAR.sub(repl, url)


def discover_config(
    cmdline: Cmdline | str,
    *,
    facts: NodeFacts | None = None,
    root: Path | str = Path("/"),
    devices: Iterable[BlockDevice] | None = None,
    mount: Mounter | None = None,
    smbios_serial: str | None = None,
) -> ConfigRef | None:
    """``talos.config=`` (with variables filled in) first, then a NoCloud seed; None if neither."""
    if isinstance(cmdline, str):
        cmdline = parse_cmdline(cmdline)
    url = cmdline.get("talos.config")
    if url:
        if _VAR.search(url):
            url = substitute(url, facts if facts is not None else node_facts(root, cmdline))
        return ConfigRef(source="kernel command line talos.config=", url=url)
    return find_nocloud(devices, mount, smbios_serial)
