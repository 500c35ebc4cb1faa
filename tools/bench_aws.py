"""AWS publishing figures: EBS direct upload of a 2 GiB sparse image to a moto server on loopback.

The server runs as its own process (as a remote service would), so the uploader's threads do
not share a GIL with it. Moto keeps blocks in memory: the rate is what this host's uploader and
loopback sustain, not what EBS would; the skipped fraction is a property of the image.
``python -m tools.bench_aws [IMAGE]`` runs it alone (a synthetic image when none is given).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3

from bakery.progress import Progress
from platforms.aws.publish import AmiRequest, publish_ami

REGION = "us-east-1"
SERVER_ENV = {"MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto server process on 127.0.0.1; stopped (by its own pid) on exit."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **SERVER_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on 127.0.0.1:{port}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def synthetic_image(path: Path, size: int = 2 << 30, data: int = 160 << 20) -> Path:
    """A sparse image shaped like a baked one: a few data regions (random bytes) in a sea of holes."""
    chunk = data // 8
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(8):
            f.seek(i * (size // 8) + 4096)
            f.write(os.urandom(chunk))
    return path


def measure_upload(image: Path, workers: int = 8) -> dict[str, float]:
    """Publish ``image`` to a fresh moto server and return the upload figures."""
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    with moto_server() as endpoint:
        start = time.monotonic()
        request = AmiRequest(
            image=image,
            name=f"bench-{uuid.uuid4().hex[:8]}",
            region=REGION,
            endpoint_url=endpoint,
            workers=workers,
            poll=0.2,
        )
        result = publish_ami(request, session=session, progress=Progress(quiet=True))
        wall = time.monotonic() - start
    stats = result.stats
    assert stats is not None
    return {
        "image_mib": image.stat().st_size / 2**20,
        "blocks": stats.total_blocks,
        "sent_blocks": stats.sent_blocks,
        "sent_mib": stats.sent_bytes / 2**20,
        "hole_blocks": stats.hole_blocks,
        "zero_blocks": stats.zero_blocks,
        "skipped_fraction": stats.skipped_fraction,
        "upload_s": stats.seconds,
        "upload_mb_s": stats.mb_per_s,
        "image_mb_s": image.stat().st_size / stats.seconds / 1e6,
        "publish_s": wall,
        "workers": workers,
    }


def report(image: Path, workers: int = 8) -> dict[str, float]:
    """Print the figures for ``make bench``."""
    f = measure_upload(image, workers)
    print(
        f"aws publish ({image.name}, {f['image_mib']:.0f} MiB, moto on loopback, {workers} parallel): "
        f"sent {f['sent_blocks']:.0f}/{f['blocks']:.0f} blocks ({f['sent_mib']:.1f} MiB) in {f['upload_s']:.2f} s "
        f"= {f['upload_mb_s']:.1f} MB/s sent ({f['image_mb_s']:.0f} MB/s of image); "
        f"skipped {f['skipped_fraction']:.1%} as zero ({f['hole_blocks']:.0f} hole + {f['zero_blocks']:.0f} "
        f"all-zero blocks); whole publish {f['publish_s']:.1f} s"
    )
    return f


def main() -> int:
    if len(sys.argv) > 1:
        report(Path(sys.argv[1]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        report(synthetic_image(Path(tmp) / "synthetic-sparse.raw"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
