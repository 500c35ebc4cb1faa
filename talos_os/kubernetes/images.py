"""The ``images`` service: make sure every baked image is in containerd's ``k8s.io`` namespace.

At every boot, before the kubelet starts, the images the node ships (one OCI archive in the
read-only root) are compared with containerd's: any that is missing or differs (garbage
collection, a reset, a new OS version) gets the archive imported. Importing everything takes
minutes under emulation; a check takes a second, so a booted node only pays when it must.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
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


def ctr(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [CTR, "--address", containerd.SOCKET, "--namespace", "k8s.io", *args]
    return subprocess.run(argv, capture_output="import" not in args, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Import the baked images into containerd when any is missing."
    )
    parser.add_argument("--archive", type=Path, default=Path(versions.IMAGES_ARCHIVE))
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
    print(
        f"[images] importing {args.archive} ({len(absent)} of {len(wanted)} missing: {', '.join(absent)})",
        flush=True,
    )
    return ctr("images", "import", "--digests", str(args.archive)).returncode


if __name__ == "__main__":
    sys.exit(main())
