"""The ``images`` service: make sure every baked image is in containerd's ``k8s.io`` namespace.

At every boot, before the kubelet starts, the images the node ships (one OCI archive in the
read-only root) are compared with containerd's: any that is missing or differs (garbage
collection, a reset, a new OS version) gets the archive imported. Importing everything takes
minutes under emulation; a check takes a second, so a booted node only pays when it must.

A joining node (``--after HOST:PORT``, its control-plane endpoint) imports only once that endpoint
accepts connections: its images are of no use before it can join, and a node waiting for a control
plane that is still bootstrapping (or does not exist yet) should leave the CPU to what runs now.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from talos_os.kubernetes import containerd, versions

CTR = "/usr/bin/ctr"
NAME_ANNOTATION = "io.containerd.image.name"


def archive_images(archive: Path) -> dict[str, str]:
    """ref -> manifest digest, from the archive's index.json (written near its start)."""
    with tarfile.open(archive, mode="r|") as tar:
        for member in tar:
            if member.name == "index.json":
                data = tar.extractfile(member)
                assert data is not None
                index = json.load(data)
                return {m["annotations"][NAME_ANNOTATION]: m["digest"] for m in index["manifests"]}
    raise ValueError(f"{archive} has no index.json: it is not an OCI archive")


def present_images(listing: str) -> dict[str, str]:
    """ref -> digest from ``ctr images ls`` (columns REF TYPE DIGEST ...)."""
    out = {}
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3:
            out[cols[0]] = cols[2]
    return out


def missing(wanted: dict[str, str], present: dict[str, str]) -> list[str]:
    return sorted(ref for ref, digest in wanted.items() if present.get(ref) != digest)


def answers(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether ``HOST:PORT`` accepts a TCP connection now."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def wait_until_answers(
    endpoint: str,
    *,
    probe: Callable[[str], bool] = answers,
    sleep: Callable[[float], None] = time.sleep,
    every: float = 5.0,
    say_every: float = 300.0,
) -> float:
    """Poll ``endpoint`` until it answers, saying so at first and then every ``say_every`` seconds
    of waiting; returns how long it waited."""
    waited = 0.0
    said = -say_every
    while not probe(endpoint):
        if waited - said >= say_every:
            print(
                f"[images] importing once the control plane at {endpoint} answers ({waited:.0f} s so far)",
                flush=True,
            )
            said = waited
        sleep(every)
        waited += every
    return waited


def ctr(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [CTR, "--address", containerd.SOCKET, "--namespace", "k8s.io", *args]
    return subprocess.run(argv, capture_output="import" not in args, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Import the baked images into containerd when any is missing."
    )
    parser.add_argument("--archive", type=Path, default=Path(versions.IMAGES_ARCHIVE))
    parser.add_argument(
        "--after",
        metavar="HOST:PORT",
        default="",
        help="import only once this control-plane endpoint answers (joining nodes)",
    )
    args = parser.parse_args(argv)
    wanted = archive_images(args.archive)
    listing = ctr("images", "ls")
    if listing.returncode != 0:
        print(f"[images] containerd did not list its images: {listing.stderr.strip()}", flush=True)
        return 1
    absent = missing(wanted, present_images(listing.stdout))
    if not absent:
        print(f"[images] all {len(wanted)} baked images present", flush=True)
        return 0
    if args.after:
        waited = wait_until_answers(args.after)
        if waited:
            print(f"[images] the control plane at {args.after} answers after {waited:.0f} s", flush=True)
    print(
        f"[images] importing {args.archive} ({len(absent)} of {len(wanted)} missing: {', '.join(absent)})",
        flush=True,
    )
    return ctr("images", "import", "--digests", str(args.archive)).returncode


if __name__ == "__main__":
    sys.exit(main())
