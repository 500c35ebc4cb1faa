"""What every publishing command publishes: ``--image PATH``, or an image it bakes for its platform.

An ``--image`` is checked before anything is converted, copied or uploaded: it must be a talos-os
disk image (:mod:`platforms.image_facts`) baked for the command's platform, since a node booted
with another platform's code never reads this platform's config source. ``--force-platform``
publishes it anyway, with a warning. The kvm, xen and aws commands bake for their own platform
only, so they have no ``--platform`` option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from bakery.bake_options import BAKE_ONLY
from bakery.errors import BakeError
from bakery.image import BakeResult
from platforms.image_facts import ImageFacts, image_format, read_facts


def force_platform_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--force-platform``: publish an ``--image`` baked for another platform (loudly)."""
    return click.option(
        "--force-platform",
        is_flag=True,
        help="Publish an --image baked for another platform anyway (its node will not find this "
        "platform's config source).",
    )


def drop_platform_option(command: click.Command, platform: str) -> click.Command:
    """Hide ``--platform`` on a command that only bakes for its own ``platform``; giving it is refused
    with a sentence (not "no such option, did you mean --force-platform?")."""

    def refuse(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            raise click.UsageError(
                f"talos-bake {platform} only bakes {platform} images: drop --platform "
                f"(talos-bake raw --platform {value} bakes a {value} image)"
            )

    hidden = click.Option(["--platform"], hidden=True, expose_value=False, callback=refuse)
    command.params = [p for p in command.params if p.name != "platform"] + [hidden]
    return command


def checked_image(image: Path, platform: str, force: bool, *, refuse: bool = True) -> ImageFacts:
    """The facts of ``image``; one baked for another platform is refused (``refuse``) unless ``force``,
    else only warned about."""
    facts = read_facts(image.resolve())
    if facts.platform != platform:
        if refuse and not force:
            raise BakeError(
                f"{image} was baked for {facts.platform} (talos.platform={facts.platform}), so on {platform} "
                f"its node would not find its config: bake it with --platform {platform}, or pass "
                "--force-platform to publish it anyway"
            )
        click.echo(
            f"warning: {image.name} was baked for {facts.platform}: it boots with "
            f"talos.platform={facts.platform} and reads that platform's config sources, not {platform}'s",
            err=True,
        )
    return facts


def image_or_bake(
    ctx: click.Context, kw: dict[str, Any], platform: str, bake: Callable[[dict[str, Any]], BakeResult]
) -> Path:
    """``--image`` when given (popped from ``kw``; checked by :func:`preflight_image`), else a bake for
    ``platform`` with the bake options."""
    image: Path | None = kw.pop("image")
    kw.pop("force_platform", None)
    if image is not None:
        return image.resolve()
    set_bake_platform(ctx, kw, platform)
    return bake(kw).raw


def preflight_image(ctx: click.Context, kw: dict[str, Any], platform: str) -> ImageFacts | None:
    """The cheap checks of ``--image`` (None when baking): no bake option beside it, a talos-os image,
    the command's platform. Run before any other work."""
    image: Path | None = kw.get("image")
    if image is None:
        return None
    refuse_bake_options(ctx)
    return checked_image(image, platform, bool(kw.get("force_platform")))


def refuse_bake_options(ctx: click.Context, bake_only: tuple[str, ...] = BAKE_ONLY) -> None:
    """A bake option next to ``--image`` is refused, not silently ignored: an image published without
    the user's --config-url boots a node that waits for a config forever."""
    params = {p.name for p in ctx.command.params}
    given = [
        n for n in bake_only if n in params and ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE
    ]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise BakeError(f"{flag} only applies when baking: drop it, or drop --image to bake a new image")


def set_bake_platform(ctx: click.Context, kw: dict[str, Any], platform: str) -> None:
    """A bake for a command without ``--platform`` is for ``platform``; where the option exists (a
    command that may bake for several platforms), another explicit one is a BakeError."""
    if "platform" not in kw or ctx.get_parameter_source("platform") == ParameterSource.DEFAULT:
        kw["platform"] = platform
    elif kw["platform"] != platform:
        raise BakeError(
            f"talos-bake {platform} publishes {platform} images, not {kw['platform']}: drop --platform "
            "(or bake that image with talos-bake raw)"
        )


def is_qcow2(path: Path) -> bool:
    """A qcow2 image starts with ``QFI\\xfb``; anything else is taken as raw."""
    return image_format(path) == "qcow2"


Req = TypeVar("Req")


def request_from(cls: type[Req], kw: Mapping[str, Any], **renamed: str) -> Req:
    """A publishing command's typed request: each dataclass field from click's option of the same name
    (or the option ``renamed`` names), so the commands stop passing click's ``kw`` dict around."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return cls(**{f.name: kw[renamed.get(f.name, f.name)] for f in fields})
