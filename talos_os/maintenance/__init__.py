"""Maintenance mode: the API a node without a machine config serves until one is pushed to it.

TLS with a self-signed certificate (its SHA-256 fingerprint is printed on the console), no client
certificate, and only what configuring the node needs: ``Node.Version``, ``Machine.Disks`` and
``Machine.ApplyConfiguration``; every other call is refused with a sentence saying so. The server
runs as its own process (``python3 -m talos_os.maintenance``) started by the init and stopped as
soon as a config is accepted: the insecure API exists only while the node has no config. The
accepted config is handed to the init through :data:`HANDOFF` (written atomically, mode 0600).

This package's ``__init__`` imports nothing heavy: the init reads its constants.
"""

from __future__ import annotations

from pathlib import Path

# Before anything below imports grpc: it makes grpc refuse TLS 1.2 (see talos_os.api); light.
from talos_os import api as _api  # noqa: F401

PORT = 50000
STATE = Path("/run/talos/maintenance")
HANDOFF = STATE / "config.yaml"  # the accepted config, for the init
CERT = STATE / "server.crt"
KEY = STATE / "server.key"
SERVER_NAME = "talos-maintenance"  # the certificate's only name; clients pin it by fingerprint
REFUSED = (
    "the node is in maintenance mode (it has no machine config yet): only version, disks and "
    "apply-config --insecure are served; push a config with `osctl apply-config --insecure -n NODE --file CONFIG`"
)
