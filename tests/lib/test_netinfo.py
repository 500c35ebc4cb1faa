"""The node's network read over netlink, against the host itself (the real kernel), and served to
osd through the init's control socket."""

from __future__ import annotations

import os
from pathlib import Path

from talos_os.init.control import ControlServer, network_handlers
from talos_os.lib import netinfo
from talos_os.lib.control import call
from talos_os.osd.__main__ import node_addresses


def test_host_network_facts() -> None:
    lo = next(i for i in netinfo.interfaces() if i.name == "lo")
    assert "127.0.0.1/8" in lo.addresses and "LOOPBACK" in lo.flags and lo.mtu > 0
    assert "127.0.0.1" in netinfo.addresses()
    assert "127.0.0.1" not in netinfo.addresses(include_loopback=False)
    assert all(not a.startswith("fe80:") for a in netinfo.addresses())
    routes = netinfo.routes()
    assert all(r.table != netinfo.LOCAL_TABLE and r.family in ("inet", "inet6") for r in routes)


def test_the_init_answers_the_network_and_osd_reads_its_addresses_there(tmp_path: Path) -> None:
    with ControlServer(tmp_path / "init.sock", network_handlers(), allowed_uids={os.getuid()}) as server:
        interfaces = call(server.path, "interfaces")["result"]
        assert {"name": "lo", "index": 1}.items() <= next(i for i in interfaces if i["name"] == "lo").items()
        assert call(server.path, "routes")["ok"]
        assert node_addresses(server.path) == netinfo.addresses()
        assert "127.0.0.1" not in call(server.path, "addresses", loopback=False)["result"]
