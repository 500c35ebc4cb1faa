"""Containers on the node, for ``osctl containers`` and ``osctl logs -k``.

containerd's own client (``ctr``, shipped in the image) lists containers and their tasks; the CRI's
log links in /var/log/containers name each Kubernetes container's pod, namespace and container,
and its log file holds the output in the CRI format (``TIME STREAM TAG message``). Nothing here
needs the CRI API or its generated stubs.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CTR = "/usr/bin/ctr"
SOCKET = "/run/containerd/containerd.sock"
LOG_LINKS = Path("/var/log/containers")
SYSTEM_NAMESPACE = "system"
KUBERNETES_NAMESPACE = "k8s.io"
# <pod>_<namespace>_<container>-<64 hex id>.log, as the kubelet names its links
_LINK = re.compile(r"^(?P<pod>[^_]+)_(?P<namespace>[^_]+)_(?P<container>.+)-(?P<id>[0-9a-f]{64})\.log$")
# 2024-01-01T00:00:00.123456789Z stdout F message
_CRI_LINE = re.compile(r"^\S+ (?:stdout|stderr) [FP] ?")


class ContainerError(LookupError):
    """A container that cannot be found or read; the message says which and why."""


@dataclass
class Container:
    """One container as osctl shows it."""

    namespace: str
    id: str
    image: str = ""
    pid: int = 0
    status: str = "CREATED"  # containerd's task status, CREATED when there is no task
    pod: str = ""  # namespace/name of its Kubernetes pod, "" for a sandbox or a system container
    name: str = ""  # the container's name in its pod
    log: Path | None = field(default=None, repr=False)

    @property
    def display_id(self) -> str:
        """``pod-namespace/pod:container`` for Kubernetes containers (talosctl's form), else the id."""
        return f"{self.pod}:{self.name}" if self.pod else self.id


def parse_table(text: str) -> list[list[str]]:
    """``ctr ... ls`` output without its header, split on whitespace."""
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def parse_links(names: list[str]) -> dict[str, tuple[str, str, str]]:
    """container id -> (pod namespace, pod name, container name) from the CRI's log link names."""
    out = {}
    for name in names:
        m = _LINK.match(name)
        if m:
            out[m.group("id")] = (m.group("namespace"), m.group("pod"), m.group("container"))
    return out


def merge(
    namespace: str,
    containers: list[list[str]],
    tasks: list[list[str]],
    links: dict[str, tuple[str, str, str]],
) -> list[Container]:
    """Rows of ``ctr containers ls`` and ``ctr tasks ls`` and the log links, as containers."""
    by_task = {row[0]: row for row in tasks if len(row) >= 3}
    out = []
    for row in containers:
        if not row:
            continue
        c = Container(namespace, row[0], image=row[1] if len(row) > 1 else "")
        task = by_task.get(c.id)
        if task is not None:
            c.pid, c.status = int(task[1]), task[2]
        if c.id in links:
            pod_ns, pod, name = links[c.id]
            c.pod, c.name = f"{pod_ns}/{pod}", name
            c.log = LOG_LINKS / f"{pod}_{pod_ns}_{name}-{c.id}.log"
        out.append(c)
    return sorted(out, key=lambda c: (c.pod == "", c.pod, c.name, c.id))


def _ctr(namespace: str, *args: str) -> str:
    try:
        out = subprocess.run(
            [CTR, "--address", SOCKET, "--namespace", namespace, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ContainerError(f"containerd did not answer: {exc}") from None
    if out.returncode != 0:
        raise ContainerError(f"containerd refused `ctr {' '.join(args)}`: {out.stderr.strip()[:200]}")
    return out.stdout


def list_containers(kubernetes: bool) -> list[Container]:
    """Containers of the ``k8s.io`` namespace (``kubernetes``) or of the ``system`` namespace."""
    namespace = KUBERNETES_NAMESPACE if kubernetes else SYSTEM_NAMESPACE
    containers = parse_table(_ctr(namespace, "containers", "ls"))
    tasks = parse_table(_ctr(namespace, "tasks", "ls"))
    links = parse_links(sorted(os.listdir(LOG_LINKS))) if kubernetes and LOG_LINKS.is_dir() else {}
    return merge(namespace, containers, tasks, links)


def find(containers: list[Container], wanted: str) -> Container:
    """A container by ``pod-namespace/pod:container``, by id, or by an unambiguous id prefix."""
    exact = [c for c in containers if wanted in (c.display_id, c.id)]
    if exact:
        return exact[0]
    prefixed = [c for c in containers if c.id.startswith(wanted)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise ContainerError(
            f"container id prefix {wanted!r} matches {len(prefixed)} containers: give more of it"
        )
    raise ContainerError(f"no Kubernetes container {wanted!r}: `osctl containers -k` lists them")


def strip_cri(line: str) -> str:
    """The message of a CRI log line (timestamp, stream and tag removed)."""
    m = _CRI_LINE.match(line)
    return line[m.end() :] if m else line


def read_log(
    path: Path, tail: int | None, follow: bool, active: Callable[[], bool] = lambda: True
) -> Iterator[list[str]]:
    """Pages of message lines from a CRI log file; with ``follow``, new lines as they are written."""
    try:
        f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below, kept open to follow
    except OSError as exc:
        raise ContainerError(f"cannot read the log of {path.name}: {exc.strerror}") from None
    with f:
        lines = [strip_cri(line.rstrip("\n")) for line in f]
        if tail is not None:
            lines = lines[-tail:] if tail else []
        if lines:
            yield lines
        while follow and active():
            more = [strip_cri(line.rstrip("\n")) for line in f]
            if more:
                yield more
            else:
                time.sleep(0.5)
