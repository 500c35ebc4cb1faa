"""``osctl config ...``: generate and validate machine configs, and manage the talosconfig.

The talosconfig location is shared by every osctl command: ``--talosconfig`` (before or after any
command, see :mod:`talos_os.osctl.flags`) beats ``$TALOSCONFIG`` beats ``~/.talos/config``;
``--context`` picks a context other than the current one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from talos_os import pki, talosconfig
from talos_os.config.generate import DEFAULT_INSTALL_DISK, DEFAULT_KUBERNETES_VERSION, FILE_NAMES, generate
from talos_os.config.kinds import Mode
from talos_os.osctl import flags
from talos_os.osctl.errors import user_errors
from talos_os.osctl.output import render


def talosconfig_path(ctx: click.Context | None = None) -> Path:
    """The talosconfig this invocation uses (``--talosconfig``, then $TALOSCONFIG, then the default)."""
    return flags.talosconfig_path(ctx)


def register(root: click.Group) -> None:
    """Attach ``config`` to the root group (cli.py gives every command the global options)."""
    root.add_command(config)


@click.group(epilog="Example: osctl config generate demo https://10.5.0.2:6443 -o ./gen")
def config() -> None:
    """Generate and validate machine configs; manage the client config (talosconfig)."""


# ---- machine configs -------------------------------------------------------------------------------------


def _split_sans(values: Sequence[str]) -> list[str]:
    """``--additional-sans`` may be repeated and/or comma separated."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _refuse_overwrite(targets: Sequence[Path]) -> None:
    for path in targets:
        if path.exists() or path.is_symlink():
            raise click.ClickException(f"{path} already exists; pass --force to overwrite it")


def _k8s_version(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """``1.30.2`` and ``v1.30.2`` are the same version; the config stores the ``v`` form."""
    value = value.strip()
    return value if value.startswith("v") else f"v{value}"


@config.command(
    "generate",
    epilog="\b\nExample:\n  osctl config generate demo https://10.5.0.2:6443 -o ./gen --additional-sans 10.5.0.2",
)
@click.argument("cluster_name", metavar="CLUSTER")
@click.argument("endpoint", metavar="ENDPOINT")
@click.option(
    "-o",
    "--output-dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write init.yaml, controlplane.yaml, worker.yaml and talosconfig into.",
)
@click.option(
    "--additional-sans",
    multiple=True,
    metavar="SAN[,SAN...]",
    help="Extra IPs/DNS names for the API certificates (comma separated or repeated).",
)
@click.option(
    "--kubernetes-version",
    default=DEFAULT_KUBERNETES_VERSION,
    show_default=True,
    callback=_k8s_version,
    help="Kubernetes version the configs ask for, with or without the leading v (1.30.2 or v1.30.2).",
)
@click.option(
    "--install-disk",
    default=DEFAULT_INSTALL_DISK,
    show_default=True,
    help="Disk the nodes install talos-os onto (machine.install.disk).",
)
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def generate_cmd(
    cluster_name: str,
    endpoint: str,
    output_dir: Path,
    additional_sans: tuple[str, ...],
    kubernetes_version: str,
    install_disk: str,
    force: bool,
) -> None:
    """Generate machine configs and a talosconfig for CLUSTER reachable at ENDPOINT (https://HOST:PORT).

    All files hold secrets and are written with mode 0600.
    """
    targets = [output_dir / name for name in FILE_NAMES]
    if not force:
        _refuse_overwrite(targets)
    with user_errors():
        generated = generate(
            cluster_name,
            endpoint,
            additional_sans=_split_sans(additional_sans),
            kubernetes_version=kubernetes_version,
            install_disk=install_disk,
        )
        output_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, text in zip(targets, generated.files().values(), strict=True):
            pki.write_secret(path, text.encode())
            click.echo(f"created {path}")


@config.command(
    "validate",
    epilog="\b\nExamples:\n  osctl config validate worker.yaml --mode metal\n  cat worker.yaml | osctl config validate -",
)
@click.argument("file", metavar="FILE")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=None,
    help="Also check the rules of this boot mode.",
)
@click.pass_context
def validate_cmd(ctx: click.Context, file: str, mode: str | None) -> None:
    """Check a machine config (FILE, or - for stdin); print every problem, one per line, and exit 1 if any."""
    from talos_os.config import ConfigError, loads  # the model: only for the commands that validate

    shown = "stdin" if file == "-" else file
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        loads(data, mode=Mode(mode) if mode else None)
    except ConfigError as err:
        lines = [str(issue) for issue in err.issues] or [str(err)]
        for line in lines:
            click.echo(line, err=True)
        click.echo(f"{shown} is not valid: {len(lines)} problem(s)", err=True)
        ctx.exit(1)
    click.echo(f"{shown} is valid for mode {mode}" if mode else f"{shown} is valid")


@config.command("schema", epilog="Example: osctl config schema > talos-os-config.schema.json")
def schema_cmd() -> None:
    """Print the machine config's JSON Schema (for editors and CI)."""
    from talos_os.config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


# ---- talosconfig -----------------------------------------------------------------------------------------


def _load() -> tuple[Path, talosconfig.TalosConfig]:
    path = talosconfig_path()
    return path, talosconfig.load(path)


@config.command("contexts", epilog="Example: osctl config contexts -o yaml")
@flags.output_option()
def contexts_cmd(output: str | None) -> None:
    """List the talosconfig's contexts; * marks the current one."""
    with user_errors():
        _path, cfg = _load()
    records: list[dict[str, Any]] = [
        {"name": name, "current": name == cfg.context, "endpoints": ctx.endpoints, "nodes": ctx.nodes}
        for name, ctx in sorted(cfg.contexts.items())
    ]
    rows = [
        ["*" if r["current"] else "", r["name"], ",".join(r["endpoints"]), ",".join(r["nodes"])]
        for r in records
    ]
    click.echo(render(flags.output_format(output), ["CURRENT", "NAME", "ENDPOINTS", "NODES"], rows, records))


@config.command("context", epilog="Example: osctl config context demo")
@click.argument("name")
def context_cmd(name: str) -> None:
    """Make NAME the current context."""
    with user_errors():
        path, cfg = _load()
        cfg.use_context(name)
        talosconfig.save(cfg, path)
    click.echo(f"current context is now {name}")


def _update_selected(
    update: Callable[[talosconfig.TalosConfig, list[str]], None], values: tuple[str, ...], what: str
) -> None:
    """Change the ``--context`` context (else the current one), leaving which one is current alone."""
    with user_errors():
        path, cfg = _load()
        current = cfg.context
        if flags.context_name() is not None:
            flags.selected_context(cfg)  # refuses an unknown --context with the names it knows
            cfg.context = flags.context_name()
        update(cfg, list(values))
        changed, cfg.context = cfg.context, current
        talosconfig.save(cfg, path)
    shown = ", ".join(values) if values else "(none: requests go to the endpoint itself)"
    click.echo(f"{what} of context {changed}: {shown}")


@config.command("endpoint", epilog="Example: osctl config endpoint 10.5.0.2 10.5.0.3")
@click.argument("hosts", metavar="HOST...", nargs=-1, required=True)
def endpoint_cmd(hosts: tuple[str, ...]) -> None:
    """Set the endpoints (nodes osctl connects to) of the current context (or --context's)."""
    _update_selected(talosconfig.TalosConfig.set_endpoints, hosts, "endpoints")


@config.command("node", epilog="Example: osctl config node 10.5.0.2")
@click.argument("hosts", metavar="[HOST...]", nargs=-1)
def node_cmd(hosts: tuple[str, ...]) -> None:
    """Set the target nodes of the current context, or --context's (none: target the endpoint)."""
    _update_selected(talosconfig.TalosConfig.set_nodes, hosts, "nodes")


@config.command("merge", epilog="Example: osctl config merge ./gen/talosconfig")
@click.argument("file", metavar="FILE")
def merge_cmd(file: str) -> None:
    """Merge FILE's contexts (- reads stdin) into the talosconfig and make FILE's context current.

    Contexts whose names clash are renamed NAME-1, NAME-2... as talosctl does. Neither file may be a
    machine config: merging would replace its secrets with a talosconfig.
    """
    with user_errors():
        other = (
            talosconfig.loads(sys.stdin.buffer.read(), source="stdin")
            if file == "-"
            else talosconfig.load(file)
        )
        path = talosconfig_path()
        cfg = talosconfig.load_or_empty(path)
        renames = cfg.merge(other)
        talosconfig.save(cfg, path)
    for old, new in renames:
        click.echo(f"renamed context {old} to {new}")
    click.echo(f"merged {len(other.contexts)} context(s) into {path}; current context is {cfg.context}")
