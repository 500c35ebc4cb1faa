"""Network planning, lease reading and the files the node writes (pure logic; netlink is in test_network_netns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from talos_os.config.model import MachineNetwork
from talos_os.init import network
from talos_os.init.network import LeaseInfo, Link, LinkPlan, StaticRoute

LINKS = [
    Link(1, "lo", "00:00:00:00:00:00", loopback=True, arp_type=772),
    Link(2, "eth0", "52:54:00:12:34:56", carrier=True),
    Link(3, "eth1", "52:54:00:ab:cd:ef"),
    Link(4, "cni0", "0a:58:0a:f4:00:01", kind="bridge"),
    Link(5, "veth1234", "ee:ee:ee:ee:ee:ee", kind="veth"),
    Link(6, "ib0", None, arp_type=32),  # InfiniBand: not Ethernet
]


def netcfg(data: dict[str, Any]) -> MachineNetwork:
    return MachineNetwork.model_validate(data)


def test_without_config_every_nic_gets_dhcp() -> None:
    plans, missing = network.plan_links(LINKS, None)
    assert plans == [LinkPlan("eth0", dhcp=True), LinkPlan("eth1", dhcp=True)]
    assert missing == []
    plans, _ = network.plan_links(LINKS, netcfg({"hostname": "n1"}))  # config without interfaces: the same
    assert [p.dhcp for p in plans] == [True, True]


def test_config_names_interfaces() -> None:
    cfg = netcfg(
        {
            "interfaces": [
                {
                    "name": "eth0",
                    "cidr": "192.168.1.10/24",
                    "mtu": 9000,
                    "routes": [
                        {"network": "0.0.0.0/0", "gateway": "192.168.1.1"},
                        {"network": "10.20.0.0/16", "metric": 10},
                    ],
                },
                {"name": "veth1234", "dhcp": True},  # named: used even though it is virtual
                {"name": "eth9", "dhcp": True},
            ]
        }
    )
    plans, missing = network.plan_links(LINKS, cfg)
    assert plans == [
        LinkPlan(
            "eth0",
            dhcp=False,
            address="192.168.1.10/24",
            mtu=9000,
            routes=(StaticRoute("0.0.0.0/0", "192.168.1.1"), StaticRoute("10.20.0.0/16", None, 10)),
        ),
        LinkPlan("eth1", dhcp=False),  # a NIC the config does not name: up, nothing else
        LinkPlan("veth1234", dhcp=True),
    ]
    assert missing == ["eth9"]


def test_dhcp_timeout_comes_from_the_config_duration() -> None:
    assert network.dhcp_timeout(None) == network.DEFAULT_DHCP_TIMEOUT
    assert network.dhcp_timeout(netcfg({"dhcpTimeout": "1m30s"})) == 90.0


def test_lease_info_reads_an_ack() -> None:
    ack = {
        "yiaddr": "10.0.0.5",
        "options": {
            "subnet_mask": "255.255.252.0",
            "router": ["10.0.0.1", "10.0.0.2"],
            "name_server": ["10.0.0.53", "1.1.1.1"],
            "domain_name": "example.test.",
            "host_name": "node-5",
            "interface_mtu": 9001,
            "lease_time": 3600,
            "server_id": "10.0.0.1",
        },
    }
    assert network.lease_info(ack) == LeaseInfo(
        address="10.0.0.5/22",
        gateway="10.0.0.1",
        nameservers=("10.0.0.53", "1.1.1.1"),
        domain="example.test",
        hostname="node-5",
        mtu=9001,
        lease_time=3600,
        server="10.0.0.1",
    )
    bare = network.lease_info({"yiaddr": "10.0.0.6", "options": {"host_name": "bad_name!"}})
    assert bare == LeaseInfo(address="10.0.0.6/32")


def test_resolv_conf() -> None:
    text = network.render_resolv_conf(
        ["10.0.0.53", "10.0.0.53", "1.1.1.1", "8.8.8.8", "9.9.9.9"], ["a.test", "a.test"]
    )
    assert text.splitlines()[1:] == [
        "search a.test",
        "nameserver 10.0.0.53",
        "nameserver 1.1.1.1",
        "nameserver 8.8.8.8",
    ]
    assert network.render_resolv_conf([]).splitlines()[1:] == []


def test_hosts() -> None:
    assert network.render_hosts("node1", "10.0.0.5").splitlines()[1:] == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "10.0.0.5\tnode1",
    ]
    assert (
        network.render_hosts("node1.example.test").splitlines()[-1] == "127.0.1.1\tnode1.example.test node1"
    )


def test_choose_hostname_precedence() -> None:
    assert network.choose_hostname("cfg", "plat", "dhcp") == ("cfg", "config")
    assert network.choose_hostname(None, "plat", "dhcp") == ("plat", "platform")
    assert network.choose_hostname(None, "", "dhcp") == ("dhcp", "dhcp")
    assert network.choose_hostname(None, "ip-10-0-0-5.ec2.internal", None)[0] == "ip-10-0-0-5.ec2.internal"
    assert network.choose_hostname(None, "not valid!", None, "52:54:00:12:34:56") == (
        "talos-123456",
        "default",
    )


def test_apply_hostname_writes_files_and_sets_the_short_name(tmp_path: Path) -> None:
    calls: list[str] = []
    short = network.apply_hostname("node1.example.test", tmp_path / "etc", calls.append, address="10.0.0.5")
    assert short == "node1" and calls == ["node1"]
    assert (tmp_path / "etc/hostname").read_text() == "node1\n"
    assert "10.0.0.5\tnode1.example.test node1\n" in (tmp_path / "etc/hosts").read_text()
    assert not list((tmp_path / "etc").glob(".*.tmp"))
    with pytest.raises(ValueError, match="not a valid hostname"):
        network.apply_hostname("-bad-", tmp_path / "etc", calls.append)
    assert calls == ["node1"]


def test_leases_are_stored_per_link(tmp_path: Path) -> None:
    stored = network.lease_class(tmp_path / "leases")
    ack = {"yiaddr": "10.0.0.5", "options": {"subnet_mask": "255.255.255.0", "lease_time": 600}}
    stored(ack=ack, interface="eth0", server_mac="02:00:00:00:00:01").dump()
    loaded = stored.load("eth0")
    assert loaded is not None and loaded.ip == "10.0.0.5" and loaded.lease_time == 600
    assert stored.load("eth1") is None
    memory = network.lease_class(None)
    memory(ack=ack, interface="eth0", server_mac="x").dump()
    assert memory.load("eth0") is None


def test_state_helpers() -> None:
    lease = LeaseInfo(address="10.0.0.5/24", gateway="10.0.0.1", hostname="n5")
    state = network.NetworkState(
        links=(
            network.LinkState("eth0", 2, "52:54:00:12:34:56", "static", True, ("192.168.1.10/24",)),
            network.LinkState("eth1", 3, "52:54:00:ab:cd:ef", "dhcp", True, ("10.0.0.5/24",), lease),
        )
    )
    assert state.addresses == ["192.168.1.10/24", "10.0.0.5/24"]
    assert state.primary_address == "192.168.1.10"
    assert state.gateways == ["10.0.0.1"] and state.dhcp_hostname == "n5"
    assert state.mac == "52:54:00:12:34:56"
    link = state.link("eth1")
    assert link is not None and link.lease == lease
