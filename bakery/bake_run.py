"""Run a bake from a command's parsed options: what ``raw``, ``qcow2`` and every publishing command share."""

from __future__ import annotations

import functools
from typing import Any

import click

from bakery.bake_options import options_from
from bakery.errors import BakeError
from bakery.image import BakeResult, bake
from bakery.lockguard import guarded


def run_bake(kw: dict[str, Any], formats: tuple[str, ...] = ()) -> BakeResult:
    """Bake (the tracked lock untouched unless --update-lock), turning BakeError into a one-line error."""
    try:
        bake_formats = functools.partial(bake, formats=formats)
        result, _moved = guarded(
            bake_formats, options_from(kw), update_lock=kw.get("update_lock", False), say=_warn
        )
        return result
    except BakeError as exc:
        raise click.ClickException(str(exc)) from None


def _warn(text: str) -> None:
    click.echo(f"warning: {text}", err=True)
