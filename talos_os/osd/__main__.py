"""``python3 -m talos_os.osd``: load the machine config, pick the server identity, serve until SIGTERM.

Started by the init as a supervised service. A problem it cannot fix (no identity in the config,
port taken) is one line on stderr (the service log) and exit status 1; the supervisor retries.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from talos_os import pki
from talos_os.config import ConfigError, MachineConfig, load
from talos_os.init import control
from talos_os.osd import kmsg, node
from talos_os.osd.auth import IdentityError, server_identity
from talos_os.osd.relay import Relay
from talos_os.osd.server import DEFAULT_KUBECONFIG, DEFAULT_PORT, Osd, OsdError, Settings
from talos_os.pki import PKIError

DEFAULT_CONFIG = Path("/run/talos/config.yaml")


def build(args: argparse.Namespace, config: MachineConfig) -> Osd:
    """The server for ``config``: identity from the config (or issued for this node's addresses)."""
    network = config.machine.network
    hostname = (network.hostname if network is not None else None) or socket.gethostname()
    try:
        addresses = node.addresses()
    except OSError as exc:
        logging.warning("cannot list the node's addresses (%s): the certificate names only the host", exc)
        addresses = []
    identity, source = server_identity(config, addresses, hostname)
    logging.info("server certificate: %s (%s)", source, ", ".join([hostname, *addresses]))
    ca = config.machine.ca
    own = [hostname, *addresses]
    settings = Settings(
        relay=Relay(
            None if ca.key is None else pki.CertKey.from_b64(ca.crt, ca.key),
            ca.crt_pem,
            lambda: own,
        ),
        control_socket=args.control_socket,
        kmsg=args.kmsg,
        kubeconfig=args.kubeconfig,
        secret_paths=(args.config,),
        machine_config=config,
    )
    ca_pem = config.machine.ca.crt_pem
    return Osd(identity, ca_pem, settings, address=args.address, port=args.port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m talos_os.osd", description="The talos-os node API.")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="machine config [%(default)s]")
    p.add_argument("--control-socket", type=Path, default=control.DEFAULT_SOCKET, help="[%(default)s]")
    p.add_argument("--address", default="[::]", help="address to listen on [%(default)s: all]")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="[%(default)s]")
    p.add_argument("--kmsg", type=Path, default=kmsg.DEFAULT_KMSG, help="kernel log [%(default)s]")
    p.add_argument("--kubeconfig", type=Path, default=DEFAULT_KUBECONFIG, help="[%(default)s]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="osd: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = load(args.config)
        server = build(args, config)
        server.start()
    except ConfigError as exc:
        print(f"osd: the machine config {args.config} is not usable: {exc}", file=sys.stderr)
        return 1
    except (OSError, IdentityError, OsdError, PKIError) as exc:
        print(f"osd: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"osd: serving the node API on port {server.port}", file=sys.stderr, flush=True)
    while not stopping.wait(3600):
        pass
    server.stop(grace=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
