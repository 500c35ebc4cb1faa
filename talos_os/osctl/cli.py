"""osctl entry point: the root click group that subcommand modules attach to."""

from __future__ import annotations

import click

from talos_os import __version__
from talos_os.osctl import config_cmds, node_cmds


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="osctl")
def cli() -> None:
    """Manage talos-os nodes and their configs."""


config_cmds.register(cli)  # `osctl config ...` and the global --talosconfig option
node_cmds.register(cli)  # the node API commands and the global -e/--endpoints, -n/--nodes options


def main() -> None:
    """Console-script entry point."""
    cli()
