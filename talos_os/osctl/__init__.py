"""osctl: the operator's CLI (machine and client configs, and the node API commands)."""

# Before grpc loads: grpc then speaks TLS 1.3 only, in osctl too (see talos_os.api).
from talos_os import api as _api  # noqa: F401
