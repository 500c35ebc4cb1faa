"""osctl entry point: the root click group that subcommand modules attach to.

The node commands need the generated API stubs (``talos_os.api.gen``); ``--help``, ``completion``
and ``osctl config ...`` must not, so an installation without them still works for those and
answers a node command with the fix instead of a traceback.
"""

from __future__ import annotations

import inspect

import click
from click.shell_completion import get_completion_class

from talos_os import __version__
from talos_os.osctl import cluster_cmds, config_cmds, flags

STUBS_MISSING = (
    "the node API stubs (talos_os.api.gen) are missing from this installation, so only `osctl config` "
    "and `osctl completion` work: run `make proto` in a source checkout, or reinstall with `pip install .`"
)


class Root(click.Group):
    """The root group; knows whether the node commands could be loaded."""

    stubs_missing = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and self.stubs_missing:
            raise click.UsageError(f"osctl has no command {cmd_name!r} here: {STUBS_MISSING}")
        return command


@click.group(
    cls=Root,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: osctl --talosconfig ./talosconfig -n 10.5.0.2 services",
)
@click.version_option(__version__, prog_name="osctl")
def cli() -> None:
    """Manage talos-os nodes and their configs.

    Start with `osctl config generate CLUSTER https://HOST:6443`, which writes the machine configs
    and the talosconfig this tool uses. The global options may also follow the command.
    """


@click.command("completion", epilog='Example: eval "$(osctl completion bash)"')
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script for SHELL."""
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.ClickException(f"click has no completion for {shell}")
    root = click.get_current_context().find_root().command
    click.echo(cls(root, {}, "osctl", "_OSCTL_COMPLETE").source())


def _build() -> None:
    """Attach every command, then give each the global options (they work before or after it)."""
    cli.params.append(flags.root_output_option())
    config_cmds.register(cli)
    cli.add_command(completion_cmd)
    try:
        from talos_os.osctl import machine_cmds, node_cmds, upgrade_cmds
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("talos_os.api.gen"):
            raise
        Root.stubs_missing = True
        cli.help = f"{inspect.cleandoc(cli.help or '')}\n\nNote: {STUBS_MISSING}."
    else:
        node_cmds.register(cli)
        upgrade_cmds.register(cli)
        machine_cmds.register(cli)  # after node_cmds: it gives version --insecure
    cluster_cmds.register(cli)
    flags.attach(cli)


_build()


def main() -> None:
    """Console-script entry point."""
    cli()
