"""osd: the node API (``talos.os.v1.Node``) over grpc with mutual TLS 1.3.

Run on the node as ``python3 -m talos_os.osd --config /run/talos/config.yaml --control-socket
/run/talos/init.sock --port 50000``; see :mod:`talos_os.osd.server` and :mod:`talos_os.osd.auth`.
"""

# Before anything below imports grpc: it makes grpc refuse TLS 1.2 (see talos_os.api).
from talos_os import api as _api  # noqa: F401
