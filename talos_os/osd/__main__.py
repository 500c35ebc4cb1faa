"""``python3 -m talos_os.osd``: load the machine config, pick the server identity, serve until SIGTERM.

Started by the init as a supervised service. A problem it cannot fix (no identity in the config,
port taken) is one line on stderr (the service log) and exit status 1; the supervisor retries.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import yaml

from talos_os import pki
from talos_os.lib import control
from talos_os.lib.parked import parked, wait_for_go
from talos_os.osd import kmsg
from talos_os.osd.auth import IdentityError, server_identity
from talos_os.osd.relay import Relay
from talos_os.osd.server import DEFAULT_KUBECONFIG, DEFAULT_PORT, Osd, OsdError, Settings
from talos_os.osd.startconfig import StartConfig, StartConfigError
from talos_os.osd.startconfig import read as read_start_config
from talos_os.pki import PKIError

if TYPE_CHECKING:
    from talos_os.config import MachineConfig

DEFAULT_CONFIG = Path("/run/talos/config.yaml")
# What serving loads on first use (grpc's server and interceptors, its executor, the OpenSSL
# backend that issues the certificate, the IDNA codec for host names): a parked osd loads them
# before its go. tests/osd/test_osd_parked_imports.py fails when a module is missing here.
SERVING_MODULES = (
    "concurrent.futures.thread",
    "cryptography.hazmat.backends.openssl",
    "encodings.idna",
    "grpc._interceptor",
    "grpc._server",
)
ADDRESSES_TIMEOUT = 30.0  # the init answers at once; generous for a busy emulated node


class UnusableConfig(Exception):
    """The machine config cannot be loaded; the message is the loader's, with paths."""


def start_config(path: Path) -> StartConfig | MachineConfig:
    """What osd starts from: the few values it needs, read from the YAML the init validated; when
    they cannot be read, the full loader, whose error names what is wrong."""
    try:
        return read_start_config(path)
    except (OSError, StartConfigError, yaml.YAMLError):
        pass
    from talos_os.config import ConfigError, load  # the model: only for a config the fast read refused

    try:
        return load(path)
    except ConfigError as exc:
        raise UnusableConfig(str(exc)) from None


def node_addresses(control_socket: Path) -> list[str]:
    """The node's addresses, as the init reads them (osd itself holds no netlink socket)."""
    resp = control.call(control_socket, "addresses", timeout=ADDRESSES_TIMEOUT)
    if not resp.get("ok"):
        raise ValueError(f"the init answered: {resp.get('error')}")
    return [str(a) for a in resp.get("result") or []]


def build(args: argparse.Namespace, config: StartConfig | MachineConfig) -> Osd:
    """The server for ``config``: identity from the config (or issued for this node's addresses)."""
    network = config.machine.network
    hostname = (network.hostname if network is not None else None) or socket.gethostname()
    try:
        addresses = node_addresses(args.control_socket)
    except (OSError, ValueError) as exc:
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
        config_path=args.config,  # the full model is loaded when a call needs it (the admin kubeconfig)
    )
    ca_pem = config.machine.ca.crt_pem
    return Osd(identity, ca_pem, settings, address=args.address, port=args.port)


def process_start(stat: Path = Path("/proc/self/stat")) -> float | None:
    """Seconds after boot at which this process started (field 22 of /proc/self/stat)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def startup_times(imported: float, went: float | None = None, steps: Sequence[tuple[str, float]] = ()) -> str:
    """Where osd's start went, for its log and ``make bench``: imports, then (when the init parked
    it) the wait for its go, then serving, split into ``steps`` (config, identity, listen, the TLS
    1.2 check: each name with its seconds)."""
    now = time.monotonic()
    began = process_start()
    imports = "" if began is None else f"started {began:.1f} s after boot, imports {imported - began:.1f} s, "
    parked = "" if went is None else f"parked {went - imported:.1f} s, "
    split = f" ({', '.join(f'{name} {seconds:.1f} s' for name, seconds in steps)})" if steps else ""
    return f"{imports}{parked}serving {now - (went or imported):.1f} s later{split}, {now:.1f} s after boot"


def preload() -> None:
    """Import what serving would import after the go (:data:`SERVING_MODULES`)."""
    for name in SERVING_MODULES:
        importlib.import_module(name)


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
    imported = time.monotonic()
    went = None
    if parked():
        preload()
        imported = time.monotonic()
        if not wait_for_go(sys.stdin.buffer):
            return 0
        went = time.monotonic()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="osd: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        began = time.monotonic()
        config = start_config(args.config)
        read = time.monotonic()
        server = build(args, config)  # the node's addresses from the init, the certificate
        built = time.monotonic()
        server.start(prove_tls=False)  # proven below, beside serving
        steps = [("config", read - began), ("identity", built - read), ("listen", time.monotonic() - built)]
    except UnusableConfig as exc:
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
    print(
        f"osd: serving the node API on port {server.port} ({startup_times(imported, went, steps)})",
        file=sys.stderr,
        flush=True,
    )
    breached = threading.Event()
    threading.Thread(
        target=police_tls, args=(server, stopping, breached), name="tls-policy", daemon=True
    ).start()
    while not stopping.wait(3600):
        pass
    if breached.is_set():  # the server is stopped already
        return 1
    server.stop(grace=2.0)
    return 0


def police_tls(server: Osd, stopping: threading.Event, breached: threading.Event) -> None:
    """Prove TLS 1.2 is refused while already serving; a server that accepts it is stopped and osd
    exits 1 (the supervisor says so). The policy is set in code (talos_os.api) and the tests prove it;
    the probe guards against a refactoring that loads grpc first, so it need not delay the first answer."""
    try:
        server.prove_tls_policy()
    except OsdError as exc:
        print(f"osd: {exc}", file=sys.stderr, flush=True)
        breached.set()
        stopping.set()
    else:
        print(
            f"osd: TLS 1.2 refused (checked in {server.tls_check_seconds or 0.0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
