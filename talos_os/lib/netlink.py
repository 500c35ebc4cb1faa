"""The parts of pyroute2 the node uses (rtnetlink and the DHCPv4 client), without the rest.

pyroute2's package ``__init__`` imports every protocol it speaks (nftables, ipset, IPVS,
wireguard, nl80211, plan9, its NDB with sqlite3, unittest.mock): 394 modules where the node needs
316, about 0.13 s of a 0.55 s import set on the host and, under emulation, seconds of the init's
start read from a compressed root. So ``pyroute2`` is registered as a package whose ``__init__``
runs only when someone asks it for a top-level name (``from pyroute2 import NDB`` still works),
and the node imports the classes from the modules that define them. Import pyroute2 through this
module only; a test checks that nothing in talos_os imports it otherwise.
"""

from __future__ import annotations

import importlib.util
import sys


def _lazy_package() -> None:
    """Register ``pyroute2`` with its submodules importable and its ``__init__`` not yet run."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        raise ImportError("pyroute2 is not installed")
    loader, package = spec.loader, importlib.util.module_from_spec(spec)
    running = False

    def __getattr__(name: str) -> object:  # PEP 562: only for names the module does not have yet
        nonlocal running
        if running or name.startswith("__"):
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:  # a submodule: just that
            return importlib.import_module(f"pyroute2.{name}")
        running = True
        del package.__dict__["__getattr__"]
        loader.exec_module(package)  # the package's own __init__, once
        return getattr(package, name)

    package.__dict__["__getattr__"] = __getattr__
    sys.modules["pyroute2"] = package


_lazy_package()

from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig  # noqa: E402
from pyroute2.dhcp.enums import dhcp  # noqa: E402
from pyroute2.dhcp.hooks import Hook, Trigger  # noqa: E402
from pyroute2.dhcp.leases import Lease  # noqa: E402
from pyroute2.iproute.linux import AsyncIPRoute, IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = [
    "AsyncDHCPClient",
    "AsyncIPRoute",
    "ClientConfig",
    "Hook",
    "IPRoute",
    "Lease",
    "NetlinkError",
    "Trigger",
    "dhcp",
]
