"""A snapshot of the node's network, as the init, osd and the tests read it."""

from __future__ import annotations

from dataclasses import dataclass

from talos_os.init.network.lease import LeaseInfo


@dataclass(frozen=True)
class LinkState:
    name: str
    index: int
    mac: str | None
    method: str  # "dhcp", "static" or "up"
    carrier: bool
    addresses: tuple[str, ...] = ()
    lease: LeaseInfo | None = None
    renewals: int = 0


@dataclass(frozen=True)
class NetworkState:
    """A snapshot: what each managed link has, and the resolvers in use."""

    links: tuple[LinkState, ...] = ()
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()

    @property
    def addresses(self) -> list[str]:
        return [a for link in self.links for a in link.addresses]

    @property
    def gateways(self) -> list[str]:
        return [link.lease.gateway for link in self.links if link.lease and link.lease.gateway]

    @property
    def dhcp_hostname(self) -> str | None:
        return next((link.lease.hostname for link in self.links if link.lease and link.lease.hostname), None)

    @property
    def primary_address(self) -> str | None:
        """The first address (without prefix) of the first link that has one: what hosts maps the name to."""
        return next((a.split("/")[0] for a in self.addresses), None)

    @property
    def mac(self) -> str | None:
        return next((link.mac for link in self.links if link.mac), None)

    def link(self, name: str) -> LinkState | None:
        return next((link for link in self.links if link.name == name), None)
