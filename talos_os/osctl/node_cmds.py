"""The osctl commands that call the node API (osd): version, reboot, services, logs, cp...

Every command runs on each target node in parallel (see :mod:`talos_os.osctl.client`); tables
always start with a NODE column, and with several nodes streamed lines get a ``NODE: `` prefix. A node that fails
gets one ``error: NODE: ...`` line on stderr and the command exits 1 once the others are done.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
from google.protobuf.message import Message

from talos_os import __version__, pki, talosconfig
from talos_os.api.gen import node_pb2 as pb
from talos_os.api.gen import node_pb2_grpc as pb_grpc
from talos_os.osctl import flags
from talos_os.osctl.client import (
    CALL_TIMEOUT,
    Calls,
    Credentials,
    NodeError,
    Outcome,
    Target,
    relay_targets,
    resolve_targets,
)
from talos_os.osctl.copyout import EXTRACT_KW, ChunkReader, safe_member, skipped_note
from talos_os.osctl.errors import user_errors
from talos_os.osctl.output import LinePrinter, duration, plain, render, size

T = TypeVar("T")


EXAMPLES = {
    "version": "osctl -n 10.5.0.2 version -o yaml",
    "reboot": "osctl -n 10.5.0.2 reboot",
    "shutdown": "osctl -n 10.5.0.2 shutdown",
    "reset": "osctl -n 10.5.0.2 reset --yes",
    "services": "osctl -n 10.5.0.2,10.5.0.3 services",
    "service": "osctl service containerd restart",
    "stats": "osctl stats -o json",
    "ps": "osctl ps --namespace system",
    "logs": "osctl logs osd -f --tail 20   (a Kubernetes container: osctl logs -k kube-system/kube-apiserver-NODE:kube-apiserver)",
    "containers": "osctl containers -k",
    "dmesg": "osctl dmesg --tail 50",
    "kubeconfig": "osctl -n 10.5.0.2 kubeconfig ./kubeconfig",
    "routes": "osctl routes",
    "interfaces": "osctl interfaces -o yaml",
    "mounts": "osctl mounts",
    "memory": "osctl memory",
    "cp": "osctl cp /var/log ./logs",
    "read": "osctl read /proc/cmdline",
}


def register(root: click.Group) -> None:
    """Attach the node commands (cli.py gives them the global -e/-n/--talosconfig/--context options)."""
    for command in COMMANDS:
        if not command.epilog and command.name in EXAMPLES:
            command.epilog = f"Example: {EXAMPLES[command.name]}"
        root.add_command(command)


def _session() -> Calls:
    ctx = click.get_current_context()
    with user_errors():
        cfg = talosconfig.load(flags.talosconfig_path(ctx))
        context = flags.selected_context(cfg, ctx)
        given = flags.explicit(ctx, flags.NODES)
        explicit_endpoints = flags.explicit(ctx, flags.ENDPOINTS)
        endpoints = explicit_endpoints or context.endpoints
        nodes = given or context.nodes
        if endpoints and nodes:  # nodes that are not endpoints are relayed by the first endpoint
            targets = relay_targets(endpoints, nodes)
        else:
            targets = resolve_targets(endpoints, nodes)
        creds = Credentials.from_context(context)
        creds.check()
    return Calls(targets, creds)


def _report(outcomes: Sequence[Outcome[Any]]) -> None:
    """Print each failed node's sentence to stderr; exit 1 if any node failed."""
    failed = [o for o in outcomes if o.error is not None]
    for o in failed:
        click.echo(f"error: {o.target.name}: {o.error}", err=True)
    if failed:
        click.get_current_context().exit(1)


def _run(
    fn: Callable[[pb_grpc.NodeStub, Target], T], calls: Calls | None = None
) -> tuple[Calls, list[Outcome[T]]]:
    """``fn`` on every target of ``calls`` (else a new session); Ctrl-C closes the channels and exits 130."""
    calls = calls or _session()
    try:
        return calls, calls.run(fn)
    except KeyboardInterrupt:
        calls.cancel()
        click.get_current_context().exit(130)
        raise  # unreachable: exit raises


_output_option = flags.output_option


def _emit(
    outcomes: Sequence[Outcome[T]],
    output: str | None,
    headers: Sequence[str],
    rows: Callable[[T], Sequence[Sequence[object]]],
    records: Callable[[T], list[dict[str, Any]]],
) -> None:
    """Print every node's rows as one table with a NODE column, or JSON/YAML records with ``node``."""
    ok = [(o.target.name, o.value) for o in outcomes if o.error is None and o.value is not None]
    out = [{"node": name, **rec} for name, value in ok for rec in records(value)]
    table_rows = [[name, *row] for name, value in ok for row in rows(value)]
    click.echo(render(flags.output_format(output), ["NODE", *headers], table_rows, out))
    _report(outcomes)


def _stream(fn: Callable[[pb_grpc.NodeStub, Target], Iterator[pb.Data]], out: BinaryIO | None = None) -> None:
    """Copy each node's byte stream to stdout as it arrives (whole lines, prefixed when several)."""
    calls = _session()
    printer = LinePrinter(out or sys.stdout.buffer, prefix=calls.many)

    def pump(stub: pb_grpc.NodeStub, target: Target) -> None:
        try:
            for chunk in fn(stub, target):
                printer.write(target.name, chunk.bytes)
        finally:
            printer.close(target.name)

    _report(_run(pump, calls)[1])


@dataclass(frozen=True)
class VersionExtra:
    """More for ``osctl version`` from another command module (upgrade_cmds: the A/B slots and the last
    failed upgrade): keys for each node's JSON/YAML record, and lines after the table."""

    record: Callable[[Target, Calls], dict[str, Any]]
    table: Callable[[list[Target], Calls], None]


VERSION_EXTRAS: list[VersionExtra] = []


def _version_extras(target: Target, calls: Calls) -> dict[str, Any]:
    return {k: v for extra in VERSION_EXTRAS for k, v in extra.record(target, calls).items()}


# --- commands --------------------------------------------------------------------------------------


@click.command("version")
@_output_option()
def version_cmd(output: str | None) -> None:
    """Print the client's and each node's versions."""
    calls, outcomes = _run(lambda s, _t: s.Version(pb.Empty(), timeout=CALL_TIMEOUT))
    ok = [o for o in outcomes if o.value is not None]
    output = flags.output_format(output)
    if output != "table":
        servers = [
            {"node": o.target.name, **plain(o.value), **_version_extras(o.target, calls)}
            for o in ok
            if o.value is not None
        ]
        click.echo(render(output, [], [], {"client": {"tag": __version__, "api": "v1"}, "servers": servers}))
    else:
        click.echo(f"Client: osctl {__version__}")
        headers = ["NODE", "TAG", "API", "KERNEL", "ARCH", "HOSTNAME"]
        rows = [
            [o.target.name, v.tag, v.api, v.kernel, v.arch, v.hostname]
            for o in ok
            if (v := o.value) is not None
        ]
        if rows:
            click.echo("Server:")
            click.echo(render("table", headers, rows, None))
            for extra in VERSION_EXTRAS:
                extra.table([o.target for o in ok], calls)
    _report(outcomes)


def _action(call: Callable[[pb_grpc.NodeStub], pb.ActionReply]) -> None:
    _calls, outcomes = _run(lambda s, _t: call(s))
    for o in outcomes:
        if o.value is not None:
            click.echo(f"{o.target.name}: {o.value.message}")
    _report(outcomes)


@click.command("reboot")
def reboot_cmd() -> None:
    """Reboot the nodes (services are stopped first)."""
    _action(lambda s: s.Reboot(pb.Empty(), timeout=CALL_TIMEOUT))


@click.command("shutdown")
def shutdown_cmd() -> None:
    """Power the nodes off (services are stopped first)."""
    _action(lambda s: s.Shutdown(pb.Empty(), timeout=CALL_TIMEOUT))


@click.command("reset")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def reset_cmd(yes: bool) -> None:
    """Wipe the nodes' EPHEMERAL partition (/var: logs, images, etcd data) and reboot."""
    if not yes:
        click.confirm("Reset wipes /var (container images, logs, etcd data) on the nodes; go on?", abort=True)
    _action(lambda s: s.Reset(pb.Empty(), timeout=CALL_TIMEOUT))


M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)


def _listing(
    name: str,
    doc: str,
    call: Callable[[pb_grpc.NodeStub], R],
    items: Callable[[R], Sequence[M]],
    headers: Sequence[str],
    row: Callable[[M], Sequence[object]],
) -> click.Command:
    """A command that shows one repeated field of a node's reply: a row per item, or its JSON records."""

    @click.command(name, help=doc)
    @_output_option()
    def command(output: str | None) -> None:
        _calls, outcomes = _run(lambda s, _t: call(s))
        _emit(
            outcomes,
            output,
            headers,
            lambda r: [row(x) for x in items(r)],
            lambda r: [plain(x) for x in items(r)],
        )

    return command


_SERVICE_HEADERS = ["SERVICE", "STATE", "PID", "RESTARTS", "EXIT", "SINCE", "MESSAGE"]


def _service_row(s: pb.ServiceInfo) -> list[object]:
    return [
        s.id,
        s.state,
        s.pid or "-",
        s.restarts,
        s.exit_code if s.has_exit_code else "-",
        duration(time.time() - s.since) if s.since else "-",
        s.message,
    ]


services_cmd = _listing(
    "services",
    "List the services the init supervises on each node.",
    lambda s: s.ServiceList(pb.Empty(), timeout=CALL_TIMEOUT),
    lambda r: r.services,
    _SERVICE_HEADERS,
    _service_row,
)


@click.command("service")
@click.argument("name")
@click.argument("action", required=False, type=click.Choice(["start", "stop", "restart"]))
@_output_option()
def service_cmd(name: str, action: str | None, output: str | None) -> None:
    """Show service NAME, or start, stop or restart it."""
    if action is None:
        _calls, outcomes = _run(lambda s, _t: s.ServiceList(pb.Empty(), timeout=CALL_TIMEOUT))
        found: list[Outcome[pb.ServiceListReply]] = []
        for o in outcomes:
            if o.value is not None and not any(s.id == name for s in o.value.services):
                o.error, o.value = f"no service named {name!r}", None
            found.append(o)
        _emit(
            found,
            output,
            _SERVICE_HEADERS,
            lambda r: [_service_row(s) for s in r.services if s.id == name],
            lambda r: [plain(s) for s in r.services if s.id == name],
        )
        return
    method = {"start": "ServiceStart", "stop": "ServiceStop", "restart": "ServiceRestart"}[action]
    _calls, results = _run(
        lambda s, _t: getattr(s, method)(pb.ServiceRequest(id=name), timeout=CALL_TIMEOUT + 30)
    )
    for o in results:
        if o.value is None:
            continue
        if o.value.done or action == "start":  # starting a running service is no failure
            click.echo(f"{o.target.name}: {name} {o.value.message}")
        else:
            o.error = f"{name} {o.value.message}"
    _report(results)


stats_cmd = _listing(
    "stats",
    "CPU time and memory of each service (from its cgroup).",
    lambda s: s.Stats(pb.Empty(), timeout=CALL_TIMEOUT),
    lambda r: r.stats,
    ["NAMESPACE", "ID", "PID", "MEMORY(MB)", "CPU(s)"],
    lambda st: [
        st.namespace,
        st.id,
        st.pid or "-",
        f"{st.memory_bytes / 1e6:.2f}",
        f"{st.cpu_usage_usec / 1e6:.2f}",
    ],
)


@click.command("ps")
@click.option("--namespace", default="", help="Only this namespace: system (services), host or kernel.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include kernel threads.")
@_output_option()
def ps_cmd(namespace: str, show_all: bool, output: str | None) -> None:
    """List the processes running on the nodes."""
    _calls, outcomes = _run(
        lambda s, _t: s.Processes(pb.ProcessesRequest(namespace=namespace), timeout=CALL_TIMEOUT)
    )

    def shown(r: pb.ProcessesReply) -> list[pb.Process]:
        return [p for p in r.processes if show_all or namespace == "kernel" or p.namespace != "kernel"]

    _emit(
        outcomes,
        output,
        ["NAMESPACE", "ID", "IMAGE", "PID", "STATUS"],
        lambda r: [[p.namespace, p.id, p.image or "-", p.pid, p.status] for p in shown(r)],
        lambda r: [plain(p) for p in shown(r)],
    )


@click.command("logs")
@click.argument("service")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@click.option(
    "-k",
    "--kubernetes",
    is_flag=True,
    help="SERVICE is a Kubernetes container (namespace/pod:container or an id prefix, see `containers -k`).",
)
def logs_cmd(service: str, follow: bool, tail: int | None, kubernetes: bool) -> None:
    """Print a service's output, or a Kubernetes container's with -k."""
    request = pb.LogsRequest(
        id=service, follow=follow, tail=tail or 0, has_tail=tail is not None, kubernetes=kubernetes
    )
    _stream(lambda s, _t: s.Logs(request))


@click.command("containers")
@click.option(
    "-k", "--kubernetes", is_flag=True, help="Kubernetes' containers (containerd namespace k8s.io)."
)
@_output_option()
def containers_cmd(kubernetes: bool, output: str | None) -> None:
    """List the containers on the nodes: containerd's system namespace, or k8s.io with -k."""
    request = pb.ContainersRequest(kubernetes=kubernetes)
    _calls, outcomes = _run(lambda s, _t: s.Containers(request, timeout=CALL_TIMEOUT))

    def row(c: pb.Container) -> list[object]:
        return [c.namespace, f"{c.pod}:{c.name}" if c.pod else c.id[:12], c.image, c.pid or "-", c.status]

    _emit(
        outcomes,
        output,
        ["NAMESPACE", "ID", "IMAGE", "PID", "STATUS"],
        lambda r: [row(c) for c in r.containers],
        lambda r: [plain(c) for c in r.containers],
    )


@click.command("dmesg")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new kernel messages until interrupted.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
def dmesg_cmd(follow: bool, tail: int | None) -> None:
    """Print the nodes' kernel log."""
    request = pb.DmesgRequest(follow=follow, tail=tail or 0, has_tail=tail is not None)
    _stream(lambda s, _t: s.Dmesg(request))


@click.command("kubeconfig")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
def kubeconfig_cmd(path: Path | None) -> None:
    """Fetch the cluster's admin kubeconfig: write it to PATH (mode 0600), else print it."""
    calls = _session()
    if calls.many:
        raise click.ClickException("kubeconfig comes from one node: pass a single -n NODE")
    [outcome] = calls.run(lambda s, _t: s.Kubeconfig(pb.Empty(), timeout=CALL_TIMEOUT))
    if outcome.value is not None:
        if path is None:
            click.echo(outcome.value.bytes.decode("utf-8", "replace"), nl=False)
        else:
            with user_errors():
                pki.write_secret(path, outcome.value.bytes)
            click.echo(f"wrote {path}", err=True)
    _report([outcome])


routes_cmd = _listing(
    "routes",
    "List the nodes' routes.",
    lambda s: s.Routes(pb.Empty(), timeout=CALL_TIMEOUT),
    lambda r: r.routes,
    ["INTERFACE", "DESTINATION", "GATEWAY", "SOURCE", "METRIC", "TABLE", "PROTOCOL"],
    lambda x: [
        x.interface or "-",
        x.destination,
        x.gateway or "-",
        x.source or "-",
        x.metric,
        x.table,
        x.protocol,
    ],
)

interfaces_cmd = _listing(
    "interfaces",
    "List the nodes' network interfaces and their addresses.",
    lambda s: s.Interfaces(pb.Empty(), timeout=CALL_TIMEOUT),
    lambda r: r.interfaces,
    ["INDEX", "NAME", "MTU", "MAC", "STATE", "ADDRESSES"],
    lambda i: [i.index, i.name, i.mtu, i.mac or "-", i.state, ",".join(i.addresses) or "-"],
)

mounts_cmd = _listing(
    "mounts",
    "List the nodes' mounted file systems and their usage.",
    lambda s: s.Mounts(pb.Empty(), timeout=CALL_TIMEOUT),
    lambda r: r.mounts,
    ["FILESYSTEM", "TYPE", "SIZE", "USED", "AVAILABLE", "USE%", "MOUNTED ON"],
    lambda m: [
        m.source,
        m.fstype,
        size(m.size) if m.size else "-",
        size(m.used) if m.size else "-",
        size(m.available) if m.size else "-",
        f"{100 * m.used / m.size:.0f}%" if m.size else "-",
        m.target,
    ],
)


@click.command("memory")
@_output_option()
def memory_cmd(output: str | None) -> None:
    """The nodes' memory (MiB), like free(1)."""
    _calls, outcomes = _run(lambda s, _t: s.Memory(pb.Empty(), timeout=CALL_TIMEOUT))

    def mib(n: int) -> str:
        return str(n >> 20)

    _emit(
        outcomes,
        output,
        ["TOTAL", "USED", "FREE", "SHARED", "BUFFERS", "CACHE", "AVAILABLE"],
        lambda m: [
            [
                mib(m.total),
                mib(max(0, m.total - m.free - m.buffers - m.cached)),
                mib(m.free),
                mib(m.shared),
                mib(m.buffers),
                mib(m.cached),
                mib(m.available),
            ]
        ],
        lambda m: [plain(m)],
    )


@click.command("cp")
@click.argument("node_path", metavar="NODE_PATH")
@click.argument("local_dir", metavar="LOCAL_DIR", type=click.Path(file_okay=False, path_type=Path))
def cp_cmd(node_path: str, local_dir: Path) -> None:
    """Copy NODE_PATH (a file or a tree) from the nodes into LOCAL_DIR (LOCAL_DIR/NODE with several)."""
    calls = _session()

    def dest_of(target: Target) -> Path:
        return local_dir / target.name.replace(":", "_") if calls.many else local_dir

    def copy(stub: pb_grpc.NodeStub, target: Target) -> tuple[int, str]:
        dest = dest_of(target)
        dest.mkdir(parents=True, exist_ok=True)
        call = stub.CopyOut(pb.CopyOutRequest(path=node_path))
        reader = io.BufferedReader(ChunkReader(call), 1 << 16)
        count = 0
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    safe = safe_member(member, str(dest))
                    if safe is not None:
                        tar.extract(safe, dest, **EXTRACT_KW)  # already checked by safe_member
                        count += 1
            for _rest in call:  # the stream's end brings the node's note of what it left out
                pass
        except (OSError, tarfile.TarError) as exc:
            raise NodeError(f"copying {node_path} into {dest} failed: {exc}") from None
        return count, skipped_note(dict(call.trailing_metadata() or ()))

    _calls, outcomes = _run(copy, calls)
    for o in outcomes:
        if o.value is not None:
            count, skipped = o.value
            click.echo(
                f"{o.target.name}: copied {count} entries of {node_path} into {dest_of(o.target)}", err=True
            )
            if skipped:
                click.echo(f"{o.target.name}: warning: {skipped}", err=True)
    _report(outcomes)


@click.command("read")
@click.argument("path")
def read_cmd(path: str) -> None:
    """Print a file of the nodes (secrets need an os:admin certificate)."""
    _stream(lambda s, _t: s.Read(pb.ReadRequest(path=path)))


COMMANDS: list[click.Command] = [
    version_cmd,
    reboot_cmd,
    shutdown_cmd,
    reset_cmd,
    services_cmd,
    service_cmd,
    stats_cmd,
    ps_cmd,
    logs_cmd,
    containers_cmd,
    dmesg_cmd,
    kubeconfig_cmd,
    routes_cmd,
    interfaces_cmd,
    mounts_cmd,
    memory_cmd,
    cp_cmd,
    read_cmd,
]
