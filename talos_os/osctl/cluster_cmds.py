"""``osctl cluster create|destroy|show`` and ``osctl health``: local clusters of QEMU nodes.

Each command imports the cluster machinery it drives (create, destroy, vm, health) itself: every
other osctl command loads this module and should not pay for them.

The work lives in :mod:`talos_os.cluster`; this module parses options, shows progress and turns
ClusterError into one ``Error:`` line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from talos_os import talosconfig
from talos_os.cluster.state import DEFAULT_CIDR, ClusterError, ClusterState, existing_clusters, state_root
from talos_os.osctl import flags
from talos_os.osctl.errors import user_errors
from talos_os.osctl.output import render

HEALTH_TIMEOUT = 40 * 60
F = TypeVar("F", bound=Callable[..., Any])


def register(root: click.Group) -> None:
    root.add_command(cluster)
    root.add_command(health_cmd)


@contextmanager
def cluster_errors() -> Iterator[None]:
    try:
        with user_errors():
            yield
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None


class Progress:
    """One status line rewritten in place on a terminal; a line per change (or minute) otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ("", 0.0)

    def __call__(self, what: str, elapsed: float) -> None:
        line = f"waiting for {what} ({elapsed:.0f} s)"
        if self.tty:
            click.echo(f"\r\033[K{line[:200]}", err=True, nl=False)
        elif what != self.last[0] or time.monotonic() - self.last[1] > 60:
            click.echo(line, err=True)
            self.last = (what, time.monotonic())

    def done(self, line: str) -> None:
        click.echo(f"\r\033[K{line}" if self.tty else line, err=True)


def _state_option() -> Callable[[F], F]:
    return click.option(
        "--state",
        "state_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where clusters live [default: $TALOS_CLUSTERS_DIR or ~/.talos/clusters].",
    )


@click.group(epilog="Example: osctl cluster create --name demo --workers 2")
def cluster() -> None:
    """Create, show and destroy local clusters of QEMU nodes (as root)."""


@cluster.command("create", epilog="Example: osctl cluster create --name demo --controlplanes 1 --workers 2")
@click.option("--name", default="talos-default", show_default=True, help="Cluster name (a DNS label).")
@click.option("--controlplanes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Control-plane nodes (the first one bootstraps).")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True, help="Worker nodes.")
@click.option(
    "--cpus", type=click.IntRange(min=1), default=2, show_default=True, help="vCPUs per control plane."
)
@click.option(
    "--cpus-workers", type=click.IntRange(min=1), default=None, help="vCPUs per worker [default: --cpus]."
)
@click.option(
    "--memory", type=click.IntRange(min=512), default=4096, show_default=True, help="MiB per control plane."
)
@click.option(
    "--memory-workers", type=click.IntRange(min=512), default=2048, show_default=True, help="MiB per worker."
)
@click.option(
    "--disk", type=click.IntRange(min=2048), default=8192, show_default=True, help="MiB of disk per node."
)
@click.option(
    "--cidr", default=DEFAULT_CIDR, show_default=True, help="The cluster network (inside its namespace)."
)
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A baked kvm image (raw or qcow2); by default one is baked (cached).")  # fmt: skip
@click.option("--config-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Use the configs `osctl config generate` wrote there instead of new ones.")  # fmt: skip
@click.option("--registry-mirror", "mirrors", multiple=True, metavar="NAME=URL",
              help="A registry mirror for the nodes' containerd (repeatable).")  # fmt: skip
@click.option("--host-forward", "host_forwards", multiple=True, metavar="PORT=HOSTPORT",
              help="Let the nodes reach the host's 127.0.0.1:HOSTPORT at the gateway's PORT (e.g. a registry).")  # fmt: skip
@click.option("--locked", is_flag=True, help="Bake with --locked.")
@click.option(
    "--bake-out", type=click.Path(file_okay=False), default=None, help="The bake's --out directory."
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the cluster is healthy.")
@click.option(
    "--wait-timeout", type=click.IntRange(min=1), default=HEALTH_TIMEOUT, show_default=True, help="Seconds."
)
@_state_option()
def create_cmd(
    name: str,
    controlplanes: int,
    workers: int,
    cpus: int,
    cpus_workers: int | None,
    memory: int,
    memory_workers: int,
    disk: int,
    cidr: str,
    image: Path | None,
    config_dir: Path | None,
    mirrors: tuple[str, ...],
    host_forwards: tuple[str, ...],
    locked: bool,
    bake_out: str | None,
    wait: bool,
    wait_timeout: int,
    state_dir: Path | None,
) -> None:
    """Create a cluster: network namespace, DHCP, one QEMU per node; merge its talosconfig context."""
    from talos_os.cluster import create as create_mod
    from talos_os.cluster import health

    registry_mirrors: dict[str, list[str]] = {}
    for spec in mirrors:
        name_, sep, url = spec.partition("=")
        if not sep or not name_ or not url.startswith(("http://", "https://")):
            raise click.BadParameter(
                f"{spec!r} is not NAME=URL (like docker.io=http://10.5.0.1:5000)",
                param_hint="--registry-mirror",
            )
        registry_mirrors.setdefault(name_, []).append(url)
    forwards: dict[int, int] = {}
    for spec in host_forwards:
        guest, sep, host = spec.partition("=")
        if not (
            sep and guest.isdigit() and host.isdigit() and 0 < int(guest) < 65536 and 0 < int(host) < 65536
        ):
            raise click.BadParameter(
                f"{spec!r} is not PORT=HOSTPORT (like 5000=5000)", param_hint="--host-forward"
            )
        forwards[int(guest)] = int(host)
    bake_args = [*(["--locked"] if locked else []), *(["--out", bake_out] if bake_out else [])]
    opts = create_mod.CreateOptions(
        name=name, root=state_root(state_dir), controlplanes=controlplanes, workers=workers, cpus=cpus, worker_cpus=cpus_workers,
        memory_mb=memory, worker_memory_mb=memory_workers, disk_mb=disk, cidr=cidr, image=image,
        config_dir=config_dir, talosconfig=flags.talosconfig_path(), bake_args=bake_args,
        host_forwards=forwards, registry_mirrors=registry_mirrors,
    )  # fmt: skip
    progress = Progress()

    def until_healthy(state: ClusterState) -> None:
        _say_next(state)
        seconds = health.wait_healthy(state, wait_timeout, progress)
        progress.done(f"cluster {state.name} is healthy ({seconds:.0f} s after its VMs started)")

    started = time.monotonic()
    try:
        with cluster_errors():
            state = create_mod.create(
                opts, lambda line: click.echo(line, err=True), until_healthy if wait else None
            )
    except TimeoutError as exc:
        progress.done("")
        raise click.ClickException(
            f"{exc}. The cluster stays for inspection (serial logs under {opts.root / name}/nodes); "
            f"remove it with `osctl cluster destroy --name {name}`"
        ) from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the cluster was removed", err=True)
        sys.exit(130)
    if not wait:
        _say_next(state)
    click.echo(f"cluster {name} created in {time.monotonic() - started:.0f} s", err=True)


def _say_next(state: ClusterState) -> None:
    click.echo(
        f"context {state.context} merged into {state.talosconfig}; next:\n"
        f"  osctl --context {state.context} version\n"
        f"  osctl health --cluster {state.name}\n"
        f"  osctl cluster show --name {state.name}\n"
        f"  kubectl --kubeconfig {state.file('kubeconfig')} get nodes   (once healthy)",
        err=True,
    )


@cluster.command("destroy", epilog="Example: osctl cluster destroy --name demo")
@click.option("--name", default="talos-default", show_default=True, help="The cluster to destroy.")
@_state_option()
def destroy_cmd(name: str, state_dir: Path | None) -> None:
    """Stop the VMs and remove the namespace, taps, files and the talosconfig context."""
    from talos_os.cluster import destroy as destroy_mod

    root = state_root(state_dir)
    with cluster_errors():
        done = destroy_mod.destroy(root / name, name, say=lambda line: click.echo(line, err=True))
    if not done:
        raise click.ClickException(f"there is no cluster {name} under {root}: nothing to destroy")
    click.echo(f"cluster {name} destroyed", err=True)


@cluster.command("show", epilog="Example: osctl cluster show --name demo -o yaml")
@click.option("--name", default=None, help="The cluster [default: list them all].")
@_state_option()
@flags.output_option()
def show_cmd(name: str | None, state_dir: Path | None, output: str | None) -> None:
    """List the clusters, or one cluster's nodes with their state and forwarded ports."""
    from talos_os.cluster import vm

    root = state_root(state_dir)
    fmt = flags.output_format(output)
    with cluster_errors():
        if name is None:
            names = existing_clusters(root)
            listing = [[n, str(len(ClusterState.load(root / n).nodes))] for n in names]
            docs = [{"name": r[0], "nodes": int(r[1])} for r in listing]
            click.echo(render(fmt, ["NAME", "NODES"], listing, docs))
            return
        state = ClusterState.load(root / name)
        rows: list[dict[str, Any]] = []
        for node in state.nodes:
            pid = vm.running_pid(state, node)
            ports = {
                w: state.endpoint(node, w) for w in ("osd", "api") if f"{node.name}:{w}" in state.forwards
            }
            rows.append({
                "name": node.name, "role": node.role, "address": node.address, "running": pid is not None,
                "pid": pid, "memory_mib": node.memory_mb, "osd": ports.get("osd"), "api": ports.get("api"),
            })  # fmt: skip
        headers = ["NAME", "ROLE", "ADDRESS", "STATE", "MEMORY", "OSD", "API"]
        table = [
            [r["name"], r["role"], r["address"], "running" if r["running"] else "stopped",
             f"{r['memory_mib']} MiB", r["osd"] or "-", r["api"] or "-"]
            for r in rows
        ]  # fmt: skip
        doc = {"name": state.name, "directory": str(state.directory), "network": state.cidr,
               "namespace": state.netns, "context": state.context, "nodes": rows}  # fmt: skip
        click.echo(render(fmt, headers, table, doc))


@click.command("health", epilog="Example: osctl health --cluster demo")
@click.option(
    "--cluster", "name", default=None, help="The cluster [default: the talosconfig's current context]."
)
@_state_option()
def health_cmd(name: str | None, state_dir: Path | None) -> None:
    """Check a local cluster: osd on every node, API servers, etcd members, nodes Ready."""
    from talos_os.cluster import health

    root = state_root(state_dir)
    with cluster_errors():
        if name is None:
            config = talosconfig.load(flags.talosconfig_path())
            name = flags.context_name() or config.context
        if not name or not (root / name / "state.json").exists():
            raise ClusterError(
                f"no cluster {name or '(no current context)'} under {root}: pass --cluster NAME "
                "(`osctl cluster show` lists them)"
            )
        results = health.run_checks(ClusterState.load(root / name))
    for result in results:
        if result.ok:
            click.echo(f"OK    {result.name}")
        for line in result.failures:
            click.echo(f"FAIL  {result.name}: {line}")
    if any(not r.ok for r in results):
        raise click.exceptions.Exit(1)
