"""The Kubernetes payload as a bake step: the multi-call binary, built from bakery/recipes/kubernetes.

Its output is one file (``k8s``); the rootfs step installs it with its command links and makes the
OCI images around it (``bakery/kubernetes/payload.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bakery.fetch import sha256_of
from bakery.kubernetes import build
from bakery.pipeline import Step
from bakery.stepcache import Entry, Staging
from bakery.steps import BakeContext, register_payload
from talos_os.kubernetes import versions


def make(ctx: BakeContext, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    binary = staging.out / "k8s"
    seconds = build.compile_payload(
        binary, ctx.opts.epoch, report=lambda done, total: ctx.progress.count("go packages", done, total)
    )
    build.check_binary(binary)
    ctx.progress.say(
        f"kubernetes {versions.KUBERNETES} built in {seconds:.0f}s ({binary.stat().st_size >> 20} MiB)"
    )
    staging.meta.update(
        version=versions.KUBERNETES,
        build_seconds=round(seconds, 1),
        go=build.go_version(),
        sha256=sha256_of(binary),
    )


def manifest(step_meta: Mapping[str, Any], rootfs_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``kubernetes`` section: versions, sizes and the images' digests."""
    installed = rootfs_meta.get("kubernetes") or {}
    return {
        "version": step_meta.get("version"),
        "go": step_meta.get("go"),
        "build_seconds": step_meta.get("build_seconds"),
        "binary_sha256": step_meta.get("sha256"),
        "binary_bytes": installed.get("binary_bytes"),
        "images_archive_bytes": installed.get("archive_bytes"),
        "images": installed.get("images"),
    }


register_payload(
    Step(
        "kubernetes",
        make,
        params=lambda ctx: {
            "ldflags": build.ldflags(versions.KUBERNETES, ctx.opts.epoch),
            "env": "CGO_ENABLED=0",
        },
        files=tuple(build.RECIPE_DIR / name for name in build.RECIPE_FILES),
        code=("bakery.kubernetes.build", "bakery.payloads.kubernetes", "talos_os.kubernetes.versions"),
        tools=("go",),
    ),
    rootfs_args=lambda ctx, entry: {"kubernetes_binary": entry.out / "k8s", "epoch": ctx.opts.epoch},
    manifest=manifest,
)
