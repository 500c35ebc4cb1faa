"""``osctl config ...``: generate and validate machine configs, and manage the talosconfig.

The talosconfig location is shared by every osctl command: ``--talosconfig`` (on the root group or on
``config``) beats ``$TALOSCONFIG`` beats ``~/.talos/config``. Later command groups reuse
``talosconfig_option`` and ``talosconfig_path`` rather than re-implementing that order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from talos_os import pki, talosconfig
from talos_os.config import ConfigError, Mode, json_schema, loads
from talos_os.config.generate import DEFAULT_INSTALL_DISK, DEFAULT_KUBERNETES_VERSION, FILE_NAMES, generate
from talos_os.osctl.errors import user_errors

_META_KEY = "talos_os.talosconfig"


def _remember_talosconfig(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """Store an explicit ``--talosconfig`` where any nested command can find it (``ctx.meta`` is shared)."""
    if value:
        ctx.meta[_META_KEY] = value


def talosconfig_option() -> click.Option:
    """A ``--talosconfig PATH`` option for any group or command; the innermost explicit one wins."""
    return click.Option(
        ["--talosconfig"],
        metavar="PATH",
        expose_value=False,
        callback=_remember_talosconfig,
        help="Client config to use [default: $TALOSCONFIG, else ~/.talos/config].",
    )


def talosconfig_path(ctx: click.Context | None = None) -> Path:
    """The talosconfig this invocation uses (explicit option, then $TALOSCONFIG, then the default)."""
    ctx = ctx if ctx is not None else click.get_current_context()
    explicit = ctx.meta.get(_META_KEY)
    return talosconfig.resolve_path(explicit if isinstance(explicit, str) else None)


def register(root: click.Group) -> None:
    """Attach ``config`` to the root group and give the root a global ``--talosconfig`` option."""
    if not any(p.name == "talosconfig" for p in root.params):
        root.params.append(talosconfig_option())
    root.add_command(config)


@click.group()
def config() -> None:
    """Generate and validate machine configs; manage the client config (talosconfig)."""


config.params.append(talosconfig_option())


# ---- machine configs -------------------------------------------------------------------------------------


def _split_sans(values: Sequence[str]) -> list[str]:
    """``--additional-sans`` may be repeated and/or comma separated."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _refuse_overwrite(targets: Sequence[Path]) -> None:
    for path in targets:
        if path.exists() or path.is_symlink():
            raise click.ClickException(f"{path} already exists; pass --force to overwrite it")


@config.command("generate")
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
@click.option("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION, show_default=True)
@click.option("--install-disk", default=DEFAULT_INSTALL_DISK, show_default=True)
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


@config.command("validate")
@click.argument("file", metavar="FILE")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=None,
    help="Also check the rules of this boot mode.",
)
@click.pass_context
def validate_cmd(ctx: click.Context, file: str, mode: str | None) -> None:
    """Check a machine config; print every problem, one per line, and exit 1 if there are any."""
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        loads(data, mode=Mode(mode) if mode else None)
    except ConfigError as err:
        lines = [str(issue) for issue in err.issues] or [str(err)]
        for line in lines:
            click.echo(line, err=True)
        click.echo(f"{file} is not valid: {len(lines)} problem(s)", err=True)
        ctx.exit(1)
    click.echo(f"{file} is valid for mode {mode}" if mode else f"{file} is valid")


@config.command("schema")
def schema_cmd() -> None:
    """Print the machine config's JSON Schema (for editors and CI)."""
    click.echo(json.dumps(json_schema(), indent=2))


# ---- talosconfig -----------------------------------------------------------------------------------------


def _load() -> tuple[Path, talosconfig.TalosConfig]:
    path = talosconfig_path()
    return path, talosconfig.load(path)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


@config.command("contexts")
def contexts_cmd() -> None:
    """List the talosconfig's contexts; * marks the current one."""
    with user_errors():
        _path, cfg = _load()
    rows: list[list[str]] = [["CURRENT", "NAME", "ENDPOINTS", "NODES"]]
    for name, ctx in sorted(cfg.contexts.items()):
        mark = "*" if name == cfg.context else ""
        rows.append([mark, name, ",".join(ctx.endpoints), ",".join(ctx.nodes)])
    click.echo(_table(rows))


@config.command("context")
@click.argument("name")
def context_cmd(name: str) -> None:
    """Make NAME the current context."""
    with user_errors():
        path, cfg = _load()
        cfg.use_context(name)
        talosconfig.save(cfg, path)
    click.echo(f"current context is now {name}")


def _update_current(
    update: Callable[[talosconfig.TalosConfig, list[str]], None], values: tuple[str, ...], what: str
) -> None:
    with user_errors():
        path, cfg = _load()
        update(cfg, list(values))
        talosconfig.save(cfg, path)
    shown = ", ".join(values) if values else "(none: requests go to the endpoint itself)"
    click.echo(f"{what} of context {cfg.context}: {shown}")


@config.command("endpoint")
@click.argument("hosts", metavar="HOST...", nargs=-1, required=True)
def endpoint_cmd(hosts: tuple[str, ...]) -> None:
    """Set the endpoints (nodes osctl connects to) of the current context."""
    _update_current(talosconfig.TalosConfig.set_endpoints, hosts, "endpoints")


@config.command("node")
@click.argument("hosts", metavar="[HOST...]", nargs=-1)
def node_cmd(hosts: tuple[str, ...]) -> None:
    """Set the target nodes of the current context (none: target the endpoint)."""
    _update_current(talosconfig.TalosConfig.set_nodes, hosts, "nodes")


@config.command("merge")
@click.argument("file", metavar="FILE")
def merge_cmd(file: str) -> None:
    """Merge FILE's contexts into the talosconfig and make FILE's context current.

    Contexts whose names clash are renamed NAME-1, NAME-2... as talosctl does.
    """
    with user_errors():
        other = talosconfig.load(file)
        path = talosconfig_path()
        cfg = talosconfig.load_or_empty(path)
        renames = cfg.merge(other)
        talosconfig.save(cfg, path)
    for old, new in renames:
        click.echo(f"renamed context {old} to {new}")
    click.echo(f"merged {len(other.contexts)} context(s) into {path}; current context is {cfg.context}")
