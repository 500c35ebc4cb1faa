"""Tear a cluster down completely, whatever state it is in (half created, a VM already killed).

Order: the VMs, the forwarder and dnsmasq by their pid files (checked against /proc so a reused pid
is never killed), then anything else still inside the namespace (only this cluster's processes can
be there), the namespace itself (its bridge and taps go with it), the talosconfig context, and the
cluster's directory. Every step tolerates what is already gone.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from talos_os import talosconfig
from talos_os.cluster import netns, vm
from talos_os.cluster.state import ClusterState, netns_name

Say = Callable[[str], None]


def remove_context(path: Path, context: str) -> bool:
    """Drop the cluster's context from the talosconfig; the current context moves to another or none."""
    if not path.exists():
        return False
    config = talosconfig.load(path)
    if context not in config.contexts:
        return False
    del config.contexts[context]
    if config.context == context:
        config.context = next(iter(sorted(config.contexts)), None)
    talosconfig.save(config, path)
    return True


def destroy(directory: Path, name: str, say: Say = lambda _line: None) -> list[str]:
    """Destroy the cluster whose state is ``directory``; returns what was removed, one line each."""
    done: list[str] = []
    state: ClusterState | None = None
    if (directory / "state.json").exists():
        state = ClusterState.load(directory)
    if state is not None:
        for node in state.nodes:
            if vm.stop(state, node):
                done.append(f"stopped VM {node.name}")
                say(done[-1])
    for daemon in ("forwarder", "dnsmasq"):
        pid = vm.daemon_pid(directory / f"{daemon}.pid")
        if pid is not None:
            vm.kill(pid)
            done.append(f"stopped {daemon} (pid {pid})")
            say(done[-1])
    ns = netns_name(name)
    for pid in netns.pids_in(ns):
        vm.kill(pid)
        done.append(f"stopped process {pid} left in namespace {ns}")
        say(done[-1])
    if netns.exists(ns):
        netns.delete(ns)
        done.append(f"deleted network namespace {ns} (bridge and taps)")
        say(done[-1])
    where, context = (state.talosconfig, state.context) if state is not None else (None, None)
    if where and context and remove_context(Path(where), context):
        done.append(f"removed context {context} from {where}")
        say(done[-1])
    if directory.exists():
        shutil.rmtree(directory)
        done.append(f"removed {directory}")
        say(done[-1])
    return done
