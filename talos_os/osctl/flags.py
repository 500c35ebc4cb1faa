"""osctl's global flags, accepted before or after the command as talosctl accepts them.

``--talosconfig``, ``--context``, ``-e/--endpoints`` and ``-n/--nodes`` are options of the root group
and of every command below it. Each stores what it was given in ``ctx.meta`` (one dict shared by the
whole invocation), so the innermost explicit value wins and commands read one place whatever the
position: ``osctl -n 10.5.0.2 version`` and ``osctl version -n 10.5.0.2`` are the same call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from talos_os import output, talosconfig

TALOSCONFIG = "talos_os.talosconfig"
CONTEXT = "talos_os.context"
ENDPOINTS = "talos_os.endpoints"
NODES = "talos_os.nodes"
OUTPUT = "talos_os.output"
OUTPUT_FORMATS = output.FORMATS
F = TypeVar("F", bound=Callable[..., Any])


def _remember(key: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.meta[key] = value

    return remember


def _remember_hosts(key: str) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], None]:
    def remember(ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> None:
        hosts = [h.strip() for v in values for h in v.split(",") if h.strip()]
        if hosts:
            ctx.meta[key] = hosts

    return remember


def global_options() -> list[click.Option]:
    """Fresh option objects (click options must not be shared between commands)."""
    return [
        click.Option(
            ["--talosconfig"],
            metavar="PATH",
            expose_value=False,
            callback=_remember(TALOSCONFIG),
            help="Client config to use [default: $TALOSCONFIG, else ~/.talos/config].",
        ),
        click.Option(
            ["--context"],
            metavar="NAME",
            expose_value=False,
            callback=_remember(CONTEXT),
            help="Context of the talosconfig to use instead of its current one.",
        ),
        click.Option(
            ["-e", "--endpoints"],
            multiple=True,
            metavar="HOST[,HOST]",
            expose_value=False,
            callback=_remember_hosts(ENDPOINTS),
            help="Endpoints to connect to [default: the context's].",
        ),
        click.Option(
            ["-n", "--nodes"],
            multiple=True,
            metavar="HOST[,HOST]",
            expose_value=False,
            callback=_remember_hosts(NODES),
            help="Nodes to run the command on, in parallel [default: the context's, else the endpoint].",
        ),
    ]


def root_output_option() -> click.Option:
    """The root's ``-o/--output``: the default format of every command below it."""
    return click.Option(
        ["-o", "--output"],
        type=click.Choice(OUTPUT_FORMATS),
        default=None,
        expose_value=False,
        callback=_remember(OUTPUT),
        help="Output format of the command [default: table].",
    )


def output_option() -> Callable[[F], F]:
    """A command's ``-o/--output table|json|yaml``; None when not given (see :func:`output_format`)."""
    return output.output_option(default=None)


def output_format(value: str | None, ctx: click.Context | None = None) -> str:
    """The command's ``-o``, else the root's, else ``table``."""
    ctx = ctx if ctx is not None else click.get_current_context()
    root = ctx.meta.get(OUTPUT)
    return value or (root if isinstance(root, str) else "table")


def attach(command: click.Command) -> None:
    """Give ``command`` and every command below it the global options they do not already have."""
    names = {p.name for p in command.params}
    opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for option in global_options():
        if option.name not in names and not set(option.opts) & opts:
            command.params.append(option)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach(sub)


def explicit(ctx: click.Context, key: str) -> list[str]:
    """Hosts given with ``-e``/``-n`` anywhere on the command line (empty: none given)."""
    value = ctx.meta.get(key)
    return list(value) if isinstance(value, list) else []


def talosconfig_path(ctx: click.Context | None = None) -> Path:
    """The talosconfig this invocation uses (explicit option, then $TALOSCONFIG, then the default)."""
    ctx = ctx if ctx is not None else click.get_current_context()
    value = ctx.meta.get(TALOSCONFIG)
    return talosconfig.resolve_path(value if isinstance(value, str) else None)


def context_name(ctx: click.Context | None = None) -> str | None:
    """The ``--context`` given, if any."""
    ctx = ctx if ctx is not None else click.get_current_context()
    value = ctx.meta.get(CONTEXT)
    return value if isinstance(value, str) else None


def selected_context(cfg: talosconfig.TalosConfig, ctx: click.Context | None = None) -> talosconfig.Context:
    """The ``--context`` named on the command line, else the talosconfig's current one."""
    name = context_name(ctx)
    if name is None:
        return cfg.current()
    if name not in cfg.contexts:
        known = ", ".join(sorted(cfg.contexts)) or "none"
        raise talosconfig.TalosConfigError(
            f"--context {name}: the talosconfig has no such context (it has: {known}); "
            "pick one of those or drop --context"
        )
    return cfg.contexts[name]
