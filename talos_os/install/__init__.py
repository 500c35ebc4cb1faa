"""Writing talos-os onto a disk: the target's checks, the write and its verification, and the image
a live ISO carries for the installer.

Shared by ``talos-bake install`` on a host (:mod:`bakery.install`) and the installer a node booted
from the live ISO runs on itself (:mod:`talos_os.install.node`). Nothing here imports the bakery:
the node image carries this package.
"""

from __future__ import annotations

from talos_os.lib.cmdline import Cmdline


def live_label(cmdline: Cmdline) -> str | None:
    """The ISO's volume label when the node booted from the live ISO (``talos.root=iso:LABEL/...``)."""
    root = cmdline.get("talos.root") or ""
    if not root.startswith("iso:"):
        return None
    return root[4:].partition("/")[0] or None
