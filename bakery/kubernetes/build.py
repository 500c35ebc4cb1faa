"""Build the Kubernetes multi-call binary from the recipe's Go module.

The bake runs this as its ``kubernetes`` step (``bakery/payloads/kubernetes.py``), keyed by what
decides the output (main.go, go.mod, go.sum, the Go toolchain, the flags): a warm bake runs no Go.
The cold build compiles some 2,500 packages and takes about ten minutes on two cores, so it
reports progress from ``go build -v``; Go's own module and build caches (``go env GOMODCACHE
GOCACHE``) are kept between bakes, so even a changed key rebuilds only what changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bakery.errors import BakeError
from talos_os.kubernetes import versions
from talos_os.lib.atomic import atomic_path

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "kubernetes"
RECIPE_FILES = ("main.go", "go.mod", "go.sum")
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


def go_version() -> str:
    """``go version``'s answer; a missing toolchain is the one-sentence error a user can act on."""
    if shutil.which("go") is None:
        raise BakeError(
            "the Go toolchain (`go`) is not on PATH: the Kubernetes payload is built from its Go modules; "
            "install Go >= 1.26 (or put /usr/local/go/bin on PATH)"
        )
    out = subprocess.run(["go", "version"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BakeError(f"`go version` failed: {out.stderr.strip()}")
    return out.stdout.strip()


def ldflags(version: str, epoch: int) -> str:
    """Version strings every component reports (kubeadm compares them), stripped symbols."""
    major, minor = version.removeprefix("v").split(".")[:2]
    build_date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "gitCommit": "",
        "buildDate": build_date,
    }
    sets = [f"-X {pkg}.{name}={value}" for pkg in VERSION_PACKAGES for name, value in values.items()]
    return " ".join(["-s", "-w", *sets])


def build_env() -> dict[str, str]:
    """A static, reproducible build: no cgo, no VCS stamping, amd64."""
    return {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOOS": "linux",
        "GOARCH": "amd64",
        "GOFLAGS": "-buildvcs=false",
    }


def count_packages(recipe_dir: Path, env: dict[str, str]) -> int:
    """How many packages the build compiles (the denominator of the progress display)."""
    out = subprocess.run(
        ["go", "list", "-deps", "."], cwd=recipe_dir, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise BakeError(f"go could not resolve the Kubernetes recipe's modules: {_last_lines(out.stderr)}")
    return len(out.stdout.split())


def compile_payload(
    out: Path,
    epoch: int,
    *,
    recipe_dir: Path = RECIPE_DIR,
    version: str = versions.KUBERNETES,
    report: Callable[[int, int], None] | None = None,
) -> float:
    """Build the multi-call binary at ``out`` (atomically); returns the seconds it took."""
    go_version()
    env = build_env()
    total = count_packages(recipe_dir, env)
    started = time.monotonic()
    with atomic_path(out) as tmp:
        cmd = ["go", "build", "-v", "-trimpath", "-ldflags", ldflags(version, epoch), "-o", str(tmp), "."]
        proc = subprocess.Popen(cmd, cwd=recipe_dir, env=env, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        errors: list[str] = []
        done = 0
        # go build -v names each package on stderr as it compiles it; other lines are errors.
        for line in proc.stderr:
            line = line.rstrip("\n")
            if line.startswith(("#", " ", "\t")) or ":" in line:
                errors.append(line)
                continue
            done += 1
            if report is not None:
                report(min(done, total), total)
        if proc.wait() != 0:
            raise BakeError(f"building the Kubernetes payload failed: {_last_lines(chr(10).join(errors))}")
    return time.monotonic() - started


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "no output"


def check_binary(binary: Path, version: str = versions.KUBERNETES) -> None:
    """The binary reports the pinned version and kubeadm wants exactly the images the bakery makes."""
    got = _run(binary, "kubeadm", "version", "-o", "short").strip()
    if got != version:
        raise BakeError(f"the built kubeadm reports {got!r}, not {version!r}: rebuild the payload")
    wanted = sorted(
        _run(binary, "kubeadm", "config", "images", "list", "--kubernetes-version", version).split()
    )
    made = sorted(image.ref for image in versions.images(version))
    if wanted != made:
        raise BakeError(
            f"kubeadm {version} expects images {wanted}, talos_os/kubernetes/versions.py makes {made}: "
            "update versions.py to kubeadm's list"
        )


def _run(binary: Path, *args: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    out = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )
    if out.returncode != 0:
        raise BakeError(f"`k8s {' '.join(args)}` failed: {_last_lines(out.stderr)}")
    return out.stdout


__all__ = ["check_binary", "compile_payload", "go_version", "ldflags"]
