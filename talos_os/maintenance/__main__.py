"""``python3 -m talos_os.maintenance``: serve the maintenance API until a config is accepted.

Started by the init when no platform source offered a config. It reads the certificate the init
made (the init printed its fingerprint), serves, writes the accepted config to ``--handoff`` and
exits 0. A problem it cannot fix (the port is taken) is one console line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from talos_os.init.console import Console
from talos_os.maintenance import CERT, HANDOFF, KEY, PORT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m talos_os.maintenance", description="The maintenance API.")
    p.add_argument("--cert", type=Path, default=CERT)
    p.add_argument("--key", type=Path, default=KEY)
    p.add_argument("--handoff", type=Path, default=HANDOFF)
    p.add_argument("--image-map", type=Path, default=None, help="the live ISO's talos/image.json")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--console", default="/dev/console", help="where its lines go [%(default)s]")
    p.add_argument("--kmsg", default="/dev/kmsg", help="and their kernel-log copy [%(default)s]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(args.console, args.kmsg)
    image_size = None
    if args.image_map is not None:
        image_size = int(json.loads(args.image_map.read_text())["size"])
    from talos_os.maintenance.server import MaintenanceServer

    try:
        server = MaintenanceServer(
            args.cert.read_bytes(), args.key.read_bytes(), args.handoff, image_size=image_size, port=args.port
        )
        port = server.start()
    except OSError as exc:
        console.log(f"maintenance: {exc}")
        return 1

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        server.stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    console.log(f"maintenance: the API answers on port {port}")
    server.stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
