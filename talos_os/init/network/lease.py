"""DHCP leases: the parts of a DHCPACK the node uses, and leases kept on /var across restarts."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talos_os.init.network.files import valid_hostname, write_atomic
from talos_os.lib.netlink import Lease


@dataclass(frozen=True)
class LeaseInfo:
    """The parts of a DHCP lease the node uses."""

    address: str  # address/prefix
    gateway: str | None = None
    nameservers: tuple[str, ...] = ()
    domain: str | None = None
    hostname: str | None = None
    mtu: int | None = None
    broadcast: str | None = None
    lease_time: int | None = None
    server: str | None = None


def lease_info(ack: dict[str, Any]) -> LeaseInfo:
    """Read a DHCPACK (pyroute2's decoded message: ``yiaddr`` and an ``options`` dict)."""
    opts = ack.get("options", {})
    address = ack["yiaddr"]
    mask = opts.get("subnet_mask")
    prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if mask else 32
    routers = opts.get("router") or []
    hostname = opts.get("host_name")
    domain = opts.get("domain_name")
    return LeaseInfo(
        address=f"{address}/{prefix}",
        gateway=routers[0] if routers else None,
        nameservers=tuple(opts.get("name_server") or ()),
        domain=domain.strip(". \0") if isinstance(domain, str) and domain.strip(". \0") else None,
        hostname=hostname.strip("\0")
        if isinstance(hostname, str) and valid_hostname(hostname.strip("\0"))
        else None,
        mtu=opts.get("interface_mtu") or None,
        broadcast=opts.get("broadcast_address"),
        lease_time=opts.get("lease_time"),
        server=opts.get("server_id"),
    )


def lease_class(directory: Path | None) -> type[Lease]:
    """A pyroute2 Lease kept in ``directory`` (one JSON file per link), or only in memory."""

    class StoredLease(Lease):  # type: ignore[misc]
        def dump(self) -> None:
            if directory is None:
                return
            directory.mkdir(parents=True, exist_ok=True)
            write_atomic(directory / f"{self.interface}.json", json.dumps(dataclasses.asdict(self)))

        @classmethod
        def load(cls, interface: str) -> Lease | None:
            if directory is None:
                return None
            try:
                data = json.loads((directory / f"{interface}.json").read_text())
                return cls(**data)
            except (OSError, ValueError, TypeError):
                return None

    return StoredLease
