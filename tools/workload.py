"""The tests' workload image and a local registry to pull it from.

``hello`` is a small static Go program (tests/kubernetes/hello) that serves HTTP and logs a line per
request; its image is written by the bakery's own OCI writer. The registry is Debian's
docker-registry on a loopback port, so a node pulls through QEMU's forwarding and nothing leaves
the machine.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bakery.kubernetes import oci
from tools.nodevm import free_port

HELLO_SRC = Path(__file__).resolve().parents[1] / "tests" / "kubernetes" / "hello"
EPOCH = 1704067200


def build_hello(out_dir: Path) -> Path:
    """The hello binary, static (no cgo), built with the machine's Go toolchain."""
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "hello"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    subprocess.run(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."],
        cwd=HELLO_SRC,
        env=env,
        check=True,
    )
    return binary


def hello_archive(out_dir: Path, ref: str) -> Path:
    """An OCI archive holding one image ``ref`` that runs ``/hello serve``."""
    binary = build_hello(out_dir)
    store = oci.BlobStore(out_dir / "oci")
    layer = store.layer([oci.Entry("hello", 0o755, source=binary)], EPOCH)
    archive = out_dir / "hello.oci.tar"
    oci.write_archive(archive, store, [oci.Image(ref, [layer], entrypoint=["/hello"], cmd=["serve"])], EPOCH)
    return archive


@dataclass(frozen=True)
class Registry:
    """A running docker-registry on 127.0.0.1:``port``."""

    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def push(self, archive: Path, ref_in_archive: str, repository: str) -> str:
        """Copy an image from an OCI archive into the registry as ``repository`` (``name:tag``)."""
        dest = f"docker://{self.address}/{repository}"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "-q",
                "--dest-tls-verify=false",
                f"oci-archive:{archive}:{ref_in_archive}",
                dest,
            ],
            check=True,
        )
        return dest


@contextlib.contextmanager
def registry() -> Iterator[Registry]:
    """Debian's docker-registry with filesystem storage in a temporary directory, on loopback."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="talos-registry-") as tmp:
        config = Path(tmp) / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp}/data\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("docker-registry did not start on loopback") from None
                    time.sleep(0.2)
            yield Registry(port)
        finally:
            proc.terminate()
            proc.wait(10)
