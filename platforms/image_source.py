"""What every publishing command publishes: ``--image PATH``, or an image it bakes for its platform."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from bakery.errors import BakeError
from bakery.image import BakeResult

QCOW2_MAGIC = b"QFI\xfb"
BAKE_ONLY = ("platform", "config_url", "extra_kernel_args", "disk_size", "kernel_flavour", "locked")


def image_or_bake(
    ctx: click.Context, kw: dict[str, Any], platform: str, bake: Callable[[dict[str, Any]], BakeResult]
) -> Path:
    """``--image`` when given (popped from ``kw``), else bake one for ``platform`` with the bake options.

    ``--platform`` defaults to the command's platform; another explicit one is refused, since a
    Xen config around a KVM image (say) boots the wrong platform code.
    """
    image: Path | None = kw.pop("image")
    if image is not None:
        refuse_bake_options(ctx)
        warn_if_other_platform(image.resolve(), platform)
        return image.resolve()
    set_bake_platform(ctx, kw, platform)
    return bake(kw).raw


def refuse_bake_options(ctx: click.Context, bake_only: tuple[str, ...] = BAKE_ONLY) -> None:
    """A bake option next to ``--image`` is refused, not silently ignored: an image published without
    the user's --config-url boots a node that waits for a config forever."""
    given = [n for n in bake_only if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise BakeError(f"{flag} only applies when baking: drop it, or drop --image to bake a new image")


def set_bake_platform(ctx: click.Context, kw: dict[str, Any], platform: str) -> None:
    """``--platform`` for a bake defaults to ``platform``; another explicit one is a BakeError."""
    if ctx.get_parameter_source("platform") == ParameterSource.DEFAULT:
        kw["platform"] = platform
    elif kw["platform"] != platform:
        raise BakeError(
            f"talos-bake {platform} publishes {platform} images, not {kw['platform']}: drop --platform "
            "(or bake that image with talos-bake raw)"
        )


def warn_if_other_platform(image: Path, platform: str) -> None:
    """Say so when the bake's manifest next to ``image`` names another platform (the user may mean it)."""
    manifest = image.with_name(image.name.removesuffix(".qcow2").removesuffix(".raw") + ".raw.manifest.json")
    try:
        baked_for = json.loads(manifest.read_text()).get("platform")
    except (OSError, ValueError):
        return
    if baked_for and baked_for != platform:
        click.echo(
            f"warning: {image.name} was baked for {baked_for}, so it boots with talos.platform={baked_for}",
            err=True,
        )


def is_qcow2(path: Path) -> bool:
    """A qcow2 image starts with ``QFI\\xfb``; anything else is taken as raw."""
    with open(path, "rb") as f:
        return f.read(4) == QCOW2_MAGIC
