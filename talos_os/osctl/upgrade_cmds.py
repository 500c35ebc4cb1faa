"""``osctl upgrade`` and ``osctl rollback``, and the slot lines ``osctl version`` adds.

Nodes are upgraded one after another (a rollout, not a stampede): each node either fetches the
bundle from ``--image URL`` or receives ``--image PATH`` streamed over the API, then reports its
progress (verify, write, drain, reboot) until it goes down into the new slot. With ``--wait`` the
next node waits until this one has come back and its slots say how it ended: the new version kept,
or the old one running again with the failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import grpc

from talos_os.api.gen import upgrade_pb2 as pb
from talos_os.api.gen import upgrade_pb2_grpc as pb_grpc
from talos_os.osctl import node_cmds
from talos_os.osctl.client import Calls, Target, channel, explain
from talos_os.osctl.output import plain, render
from talos_os.upgrade import bundle

CHUNK = 1 << 20
INSTALL_TIMEOUT = 3600.0  # seconds: download, verify and write under software emulation take minutes
CALL_TIMEOUT = 30.0
WAIT_TIMEOUT = 1800  # seconds: a reboot, then readiness (the kubelet on a Kubernetes node) under TCG
WAIT_POLL = 5.0


def _stub(ch: grpc.Channel) -> Any:
    return pb_grpc.UpgradeStub(ch)  # type: ignore[no-untyped-call]


def _session() -> Calls:
    return node_cmds._session()


class _Progress:
    """Progress lines on stderr: a new line per phase and every 10 percent of it."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.last: tuple[str, int] = ("", -1)

    def __call__(self, phase: str, done: int, total: int, message: str = "") -> None:
        tenth = done * 10 // total if total else -1
        if (phase, tenth) == self.last and not message:
            return
        self.last = (phase, tenth)
        figures = (
            f" {tenth * 10}% ({done >> 20}/{total >> 20} MiB)"
            if total
            else (f" {done >> 20} MiB" if done else "")
        )
        click.echo(f"{self.node}: {phase}{figures}{': ' + message if message else ''}", err=True)


def _chunks(path: Path, progress: Callable[[str, int, int], None]) -> Iterator[pb.UpgradeChunk]:
    size = path.stat().st_size
    sent = 0
    with open(path, "rb") as f:
        yield pb.UpgradeChunk(size=size, data=f.read(CHUNK))
        sent = f.tell()
        progress("uploading", sent, size)
        while data := f.read(CHUNK):
            sent += len(data)
            yield pb.UpgradeChunk(data=data)
            progress("uploading", sent, size)


def _check_local(image: str) -> Path | None:
    """A local bundle is checked (manifest, parts listed) before anything is sent; a URL goes as is."""
    if image.startswith(("http://", "https://")):
        return None
    if "://" in image:
        raise click.UsageError(
            f"--image {image}: use an http:// or https:// URL or the path of a bundle file"
        )
    path = Path(image)
    if not path.is_file():
        raise click.UsageError(f"--image {image}: no such file (bake one with `talos-bake upgrade-bundle`)")
    try:
        bundle.describe(path)
    except bundle.BundleError as exc:
        raise click.UsageError(f"--image {image}: {exc}") from None
    return path


def _running(slots: pb.UpgradeSlots) -> pb.UpgradeSlot | None:
    return next((s for s in slots.slots if s.running), None)


def outcome(before: pb.UpgradeSlots, now: pb.UpgradeSlots | None) -> tuple[bool, str] | None:
    """How the upgrade ended, once the node's slots show it: (kept?, sentence); None while they do not.

    Kept: the node runs another slot than before, no longer on trial and marked good. Failed: it
    runs the slot it ran before and reports a failed attempt it did not report before.
    """
    if now is None or not now.ab:
        return None  # rebooting, or not answering yet
    was, running = _running(before), _running(now)
    if was is None or running is None:
        return None
    if running.slot != was.slot:
        if now.trial or running.state != "good":
            return None
        return True, f"running {running.version} from slot {running.slot}, kept"
    if now.last_failure and now.last_failure != before.last_failure:
        return False, f"back on {running.version} in slot {running.slot}: {now.last_failure}"
    return None


def _wait_back(target: Target, calls: Calls, before: pb.UpgradeSlots, timeout: float) -> tuple[bool, str]:
    """Poll the node's slots until :func:`outcome` says how it ended; progress on stderr."""
    start = time.monotonic()
    said = ""
    while time.monotonic() - start < timeout:
        now = slots_of(target, calls)
        found = outcome(before, now)
        if found is not None:
            return found
        state = (
            "not answering (rebooting)"
            if now is None
            else (f"slot {now.trial} on trial" if now.trial else "still on its old slot")
        )
        if state != said:
            click.echo(f"{target.name}: waiting: {state} ({time.monotonic() - start:.0f} s)", err=True)
            said = state
        time.sleep(WAIT_POLL)
    return False, f"did not show how the upgrade ended within {timeout:.0f} s (see `osctl version`)"


def _upgrade_one(
    target: Target, calls: Calls, image: str, path: Path | None, stage: bool, no_drain: bool
) -> str:
    progress = _Progress(target.name)
    ch = channel(target, calls.creds)
    try:
        stub = _stub(ch)
        if path is not None:
            done = stub.Upload(_chunks(path, progress), timeout=INSTALL_TIMEOUT)
            progress("uploaded", done.bytes, done.bytes, f"sha256 {done.sha256[:16]}")
        request = pb.UpgradeInstall(url="" if path is not None else image, stage=stage, no_drain=no_drain)
        message = ""
        for p in stub.Install(request, timeout=INSTALL_TIMEOUT):
            if p.phase in ("rebooting", "staged"):
                message = p.message
            else:
                progress(p.phase, p.done, p.total, p.message)
        return message or "done"
    finally:
        ch.close()


@click.command(
    "upgrade", epilog="Example: osctl -n 10.5.0.2 upgrade --image https://10.5.0.1/talos-kvm.upgrade"
)
@click.option(
    "--image",
    required=True,
    help="The bundle: an http(s) URL the node fetches, or a local file streamed to it.",
)
@click.option(
    "--stage",
    is_flag=True,
    help="Write and arm the other slot, but do not reboot (the next reboot tries it).",
)
@click.option(
    "--no-drain", is_flag=True, help="Do not cordon and drain the Kubernetes node before the reboot."
)
@click.option(
    "--wait",
    is_flag=True,
    help="After each node's reboot, wait until it has kept the new version or fallen back (exit 1 then).",
)
@click.option(
    "--wait-timeout", type=click.IntRange(min=1), default=WAIT_TIMEOUT, show_default=True, help="Seconds."
)
@click.option(
    "--preserve",
    is_flag=True,
    hidden=True,  # talosctl's flag, accepted so scripts keep working: /var is always kept here
)
def upgrade_cmd(
    image: str, stage: bool, no_drain: bool, wait: bool, wait_timeout: int, preserve: bool
) -> None:
    """Install a bundle into each node's other slot and boot it once; the node keeps it only if it comes up.

    os:admin only. If the new version does not become ready, the node boots the old slot again by
    itself and `osctl version` reports the failed attempt. /var (etcd, images, machine id) is
    always kept. With --wait a rollout over several nodes goes on only while each one keeps the
    new version.
    """
    path = _check_local(image)
    calls = _session()
    failed = False
    for target in calls.targets:
        try:
            before = slots_of(target, calls) if wait and not stage else None
            click.echo(f"{target.name}: {_upgrade_one(target, calls, image, path, stage, no_drain)}")
            if before is not None and before.ab:
                kept, sentence = _wait_back(target, calls, before, wait_timeout)
                click.echo(f"{target.name}: {sentence}", err=not kept)
                if not kept:
                    failed = True
                    break  # a rollout stops at the first node that does not keep the new version
        except grpc.RpcError as err:
            failed = True
            click.echo(f"error: {target.name}: {explain(err, target)}", err=True)
            break  # a rollout stops at the first node that refuses
    if failed:
        click.get_current_context().exit(1)


@click.command("rollback", epilog="Example: osctl -n 10.5.0.2 rollback")
def rollback_cmd() -> None:
    """Boot the other slot from now on, if it holds a good version (os:admin); refused otherwise."""
    calls = _session()
    failed = False
    for target in calls.targets:
        ch = channel(target, calls.creds)
        try:
            reply = _stub(ch).Rollback(pb.UpgradeNothing(), timeout=CALL_TIMEOUT)
            click.echo(f"{target.name}: {reply.message}")
        except grpc.RpcError as err:
            failed = True
            click.echo(f"error: {target.name}: {explain(err, target)}", err=True)
        finally:
            ch.close()
    if failed:
        click.get_current_context().exit(1)


def slots_of(target: Target, calls: Calls) -> pb.UpgradeSlots | None:
    """The node's slots, or None when it cannot say (an older node, or an error already reported)."""
    ch = channel(target, calls.creds)
    try:
        slots: pb.UpgradeSlots = _stub(ch).Slots(pb.UpgradeNothing(), timeout=CALL_TIMEOUT)
        return slots
    except grpc.RpcError:
        return None
    finally:
        ch.close()


def slots_record(target: Target, calls: Calls) -> dict[str, Any]:
    """``osctl version -o json|yaml``'s ``upgrade`` entry for one node."""
    found = slots_of(target, calls)
    return {} if found is None else {"upgrade": plain(found)}


def print_slots(targets: list[Target], calls: Calls) -> None:
    """``osctl version``'s table of slots, and each node's last failed upgrade."""
    rows: list[list[object]] = []
    failures: list[str] = []
    for target in targets:
        found = slots_of(target, calls)
        if found is None or not found.ab:
            continue
        for s in found.slots:
            marks = ", ".join(m for m, on in (("running", s.running), ("default", s.is_default)) if on)
            rows.append([target.name, s.slot, s.state or "empty", s.version, marks])
        if found.trial:
            failures.append(f"{target.name}: slot {found.trial} is on trial (kept once the node is ready)")
        if found.last_failure:
            failures.append(f"{target.name}: last upgrade failed: {found.last_failure}")
    if rows:
        click.echo("Slots:")
        click.echo(render("table", ["NODE", "SLOT", "STATE", "VERSION", "BOOT"], rows, None))
    for line in failures:
        click.echo(line)


def register(root: click.Group) -> None:
    root.add_command(upgrade_cmd)
    root.add_command(rollback_cmd)
    node_cmds.VERSION_EXTRAS.append(node_cmds.VersionExtra(slots_record, print_slots))


__all__ = ["print_slots", "register", "slots_record"]
