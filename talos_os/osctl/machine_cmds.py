"""``osctl apply-config`` and ``osctl disks``, and ``--insecure`` for nodes in maintenance mode.

A node without a config serves a maintenance API: TLS with a self-signed certificate and no client
certificate (``--insecure``). osctl fetches the node's certificate, checks its SHA-256 fingerprint
against ``--cert-fingerprint`` (the one on the node's console; without it the fingerprint is printed
so the operator can compare), then talks to the node trusting exactly that certificate. A
configured node is reached over mutual TLS with the talosconfig, like every other command.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from talos_os import maintenance
from talos_os.api.gen import machine_pb2 as mpb
from talos_os.api.gen import machine_pb2_grpc as mpb_grpc
from talos_os.api.gen import node_pb2 as npb
from talos_os.api.gen import node_pb2_grpc as npb_grpc
from talos_os.maintenance import tls
from talos_os.osctl import flags
from talos_os.osctl.client import (
    CALL_TIMEOUT,
    NodeError,
    Target,
    channel,
    explain,
    resolve_targets,
)
from talos_os.osctl.errors import user_errors
from talos_os.osctl.output import plain, render, size

T = TypeVar("T")
MODES = {
    "auto": mpb.APPLY_AUTO,
    "no-reboot": mpb.APPLY_NO_REBOOT,
    "reboot": mpb.APPLY_REBOOT,
    "staged": mpb.APPLY_STAGED,
}
APPLY_TIMEOUT = 120.0

insecure_option = click.option(
    "--insecure",
    "-i",
    is_flag=True,
    help="Talk to a node in maintenance mode (no client certificate; its certificate is checked by fingerprint).",
)
fingerprint_option = click.option(
    "--cert-fingerprint",
    metavar="SHA256",
    help="With --insecure: the certificate fingerprint the node printed on its console; any other is refused.",
)


def _machine(ch: grpc.Channel) -> mpb_grpc.MachineStub:
    return mpb_grpc.MachineStub(ch)  # type: ignore[no-untyped-call]


def fetch_certificate(target: Target, timeout: float = 10.0) -> bytes:
    """The node's certificate (PEM) from a TLS handshake that verifies nothing (it is pinned next)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((target.host, target.port), timeout=timeout) as sock,
            ctx.wrap_socket(sock) as tls_sock,
        ):
            der = tls_sock.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise NodeError(f"cannot reach the maintenance API at {target.address}: {exc}") from None
    if not der:
        raise NodeError(f"the node at {target.address} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def pinned_channel(target: Target, pin: str | None, warn: Callable[[str], None]) -> grpc.Channel:
    """A TLS channel (no client certificate) that trusts only the certificate the node presented,
    after checking its fingerprint against ``pin``."""
    pem = fetch_certificate(target)
    found = tls.fingerprint(pem)
    if pin is not None and found != pin:
        raise NodeError(
            f"the node at {target.address} presented a certificate with fingerprint {found}, not {pin}: "
            "it is not the node whose console you read (or it restarted maintenance mode); check its console"
        )
    if pin is None:
        warn(
            f"warning: {target.name}: certificate not pinned (SHA-256 {found}); compare it with the node's "
            "console, or pass --cert-fingerprint"
        )
    creds = grpc.ssl_channel_credentials(root_certificates=pem)
    options = [("grpc.ssl_target_name_override", maintenance.SERVER_NAME), ("grpc.enable_retries", 0)]
    return grpc.secure_channel(target.address, creds, options=options)


def _targets(ctx: click.Context) -> list[Target]:
    nodes = flags.explicit(ctx, flags.NODES) or flags.explicit(ctx, flags.ENDPOINTS)
    if not nodes:
        raise click.UsageError("--insecure needs -n NODE: the address the node prints on its console")
    with user_errors():
        return resolve_targets([], nodes)


def _pin(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return tls.normalize(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cert-fingerprint") from None


def on_nodes(
    insecure: bool, pin: str | None, call: Callable[[grpc.Channel, Target], T]
) -> list[tuple[Target, T]]:
    """``call`` on every target (insecure and pinned, or mutual TLS with the talosconfig); a failed
    node is one ``error:`` line and the command exits 1 after the others."""
    ctx = click.get_current_context()
    if insecure:
        targets = _targets(ctx)

        def connect(t: Target) -> grpc.Channel:
            return pinned_channel(t, pin, lambda m: click.echo(m, err=True))

    else:
        if pin is not None:
            raise click.UsageError(
                "--cert-fingerprint pins a node in maintenance mode: use it with --insecure"
            )
        from talos_os.osctl.node_cmds import _session

        calls = _session()
        targets, creds = calls.targets, calls.creds

        def connect(t: Target) -> grpc.Channel:
            return channel(t, creds)

    results: list[tuple[Target, T]] = []
    failed = False
    for target in targets:
        try:
            ch = connect(target)
            try:
                results.append((target, call(ch, target)))
            finally:
                ch.close()
        except grpc.RpcError as err:
            failed = True
            click.echo(f"error: {target.name}: {explain_maintenance(err, target, insecure)}", err=True)
        except NodeError as err:
            failed = True
            click.echo(f"error: {target.name}: {err}", err=True)
    if failed:
        ctx.exit(1)
    return results


def explain_maintenance(err: grpc.RpcError, target: Target, insecure: bool) -> str:
    """The node's sentence, plus what an --insecure call to a configured node (or the reverse) means."""
    details = (err.details() or "").lower()
    if (
        insecure
        and err.code() == grpc.StatusCode.UNAVAILABLE
        and ("handshake" in details or "socket closed" in details or "certificate" in details)
    ):
        return (
            f"the node at {target.address} wants a client certificate: it is configured (the maintenance API "
            "only runs while a node has no config); drop --insecure and use the talosconfig"
        )
    return explain(err, target)


@click.command(
    "apply-config",
    epilog="Example: osctl apply-config --insecure -n 10.0.2.15 --file worker.yaml --cert-fingerprint 3f2a...",
)
@click.option("--file", "-f", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The machine config to apply.")  # fmt: skip
@click.option("--mode", "-m", type=click.Choice(list(MODES)), default="auto", show_default=True,
              help="auto: live when possible, else reboot; no-reboot: refuse what needs a reboot; reboot; "
                   "staged: at the next boot.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Validate and print what would change; write nothing.")
@insecure_option
@fingerprint_option
@flags.output_option()
def apply_config_cmd(
    path: Path, mode: str, dry_run: bool, insecure: bool, cert_fingerprint: str | None, output: str | None
) -> None:
    """Push a machine config to the nodes.

    A node in maintenance mode (no config yet: --insecure) validates it, saves it and boots with it;
    booted from the live ISO with machine.install.disk, it installs itself to that disk first. A
    configured node (os:admin) applies it per --mode; a config of another cluster is refused.
    """
    data = path.read_bytes()
    pin = _pin(cert_fingerprint)
    request = mpb.ApplyConfigurationRequest(data=data, mode=MODES[mode], dry_run=dry_run)
    results = on_nodes(
        insecure,
        pin,
        lambda ch, _t: _machine(ch).ApplyConfiguration(request, timeout=APPLY_TIMEOUT),
    )
    fmt = flags.output_format(output)
    if fmt != "table":
        click.echo(render(fmt, [], [], [{"node": t.name, **plain(r)} for t, r in results]))
        return
    for target, reply in results:
        click.echo(f"{target.name}: {reply.message}")
        for change in reply.changes:
            how = "live" if change.live else "at reboot"
            click.echo(f"  {change.path}  ({how})")


@click.command("disks", epilog="Example: osctl disks --insecure -n 10.0.2.15 --cert-fingerprint 3f2a...")
@insecure_option
@fingerprint_option
@flags.output_option()
def disks_cmd(insecure: bool, cert_fingerprint: str | None, output: str | None) -> None:
    """List the nodes' disks (size, model, serial, what they hold): choose machine.install.disk."""
    results = on_nodes(
        insecure,
        _pin(cert_fingerprint),
        lambda ch, _t: _machine(ch).Disks(mpb.MachineNothing(), timeout=CALL_TIMEOUT),
    )
    fmt = flags.output_format(output)
    if fmt != "table":
        rows = [{"node": t.name, **plain(d)} for t, r in results for d in r.disks]
        click.echo(render(fmt, [], [], rows))
        return
    headers = ["NODE", "DISK", "SIZE", "MODEL", "SERIAL", "CONTENTS"]
    rows2 = [
        [t.name, d.path, size(d.size), d.model or "-", d.serial or "-", d.contents or "-"]
        for t, r in results
        for d in r.disks
    ]
    click.echo(render("table", headers, rows2, None))


def insecure_version(pin: str | None, output: str | None) -> None:
    """``osctl version --insecure``: Node.Version from the maintenance API."""
    results = on_nodes(
        True, pin, lambda ch, _t: npb_grpc.NodeStub(ch).Version(npb.Empty(), timeout=CALL_TIMEOUT)
    )
    fmt = flags.output_format(output)
    if fmt != "table":
        click.echo(render(fmt, [], [], {"servers": [{"node": t.name, **plain(v)} for t, v in results]}))
        return
    headers = ["NODE", "TAG", "API", "KERNEL", "ARCH", "HOSTNAME"]
    click.echo(
        render(
            "table", headers, [[t.name, v.tag, v.api, v.kernel, v.arch, v.hostname] for t, v in results], None
        )
    )


def _with_insecure(command: click.Command) -> None:
    """Give ``version`` --insecure/--cert-fingerprint (maintenance mode) without touching its code."""
    original = command.callback
    assert original is not None
    command.params += [
        click.Option(["--insecure", "-i"], is_flag=True, help="Ask a node in maintenance mode (no client certificate)."),
        click.Option(["--cert-fingerprint"], metavar="SHA256", help="With --insecure: the fingerprint on the node's console."),
    ]  # fmt: skip

    def callback(insecure: bool, cert_fingerprint: str | None, **kw: Any) -> Any:
        if insecure:
            return insecure_version(_pin(cert_fingerprint), kw.get("output"))
        if cert_fingerprint is not None:
            raise click.UsageError(
                "--cert-fingerprint pins a node in maintenance mode: use it with --insecure"
            )
        return original(**kw)

    command.callback = callback


def register(root: click.Group, commands: Sequence[click.Command] = (apply_config_cmd, disks_cmd)) -> None:
    """Attach apply-config and disks; give version --insecure (after node_cmds registered it)."""
    for command in commands:
        root.add_command(command)
    version = root.commands.get("version")
    if version is not None:
        _with_insecure(version)


__all__ = ["apply_config_cmd", "disks_cmd", "register"]
