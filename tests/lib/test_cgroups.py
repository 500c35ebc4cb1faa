"""Per-service cgroup v2 groups on the host's real cgroup2 hierarchy (skipped where it is not writable)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from talos_os.init.supervisor import Restart, ServiceSpec, State, Supervisor
from talos_os.lib.cgroups import CgroupTree, Usage, cgroup2_mount, proc_usage, rss_bytes, unescape

T = 10.0
# Forks a child that would stay in the parent's group if joining happened after the spawn.
FORKER = [
    sys.executable,
    "-c",
    "import os, time\n"
    "if os.fork() == 0:\n    time.sleep(60)\n"
    "x = bytearray(8 << 20)\nprint('ready', flush=True)\n"
    "while True:\n    sum(range(10000))\n    time.sleep(0.01)\n",
]


def poll(predicate: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + T
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _groups(tree: CgroupTree) -> list[str]:
    return [p.name for p in tree.root.iterdir() if p.is_dir()] if tree.root.exists() else []


def _kill_all(tree: CgroupTree, name: str) -> None:
    """SIGKILL whatever is left in a group and wait until it is empty."""
    for pid in tree.pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + T
    while tree.pids(name) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def cgroot(writable_cgroup2: Path | None) -> Iterator[Path]:
    """A fresh group under the host's cgroup2 mount; removed (with anything left in it) afterwards."""
    mount = writable_cgroup2
    if mount is None:
        pytest.skip("no writable cgroup v2 hierarchy on this host")
    root = mount / f"talos-test-{uuid.uuid4().hex[:8]}"
    yield root
    tree = CgroupTree(root)
    for name in _groups(tree):
        _kill_all(tree, name)
    assert tree.remove_all() == []
    assert not root.exists()


def test_cgroup2_mount_is_found_and_mountinfo_escapes() -> None:
    mount = cgroup2_mount()
    assert mount is None or (mount / "cgroup.controllers").exists()
    assert unescape(r"/mnt/with\040space") == "/mnt/with space"


def test_mountinfo_parsing(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:20 / /proc rw,relatime shared:5 - proc proc rw\n"
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    assert cgroup2_mount(info) == Path("/sys/fs/cgroup")
    info.write_text("22 1 0:20 / /proc rw - proc proc rw\n")
    assert cgroup2_mount(info) is None
    assert cgroup2_mount(tmp_path / "missing") is None


def test_services_run_in_their_own_groups(cgroot: Path) -> None:
    sup = Supervisor(log_dir=None, cgroup_root=cgroot)
    sup.add(ServiceSpec("forker", FORKER, restart=Restart.ALWAYS, stop_timeout=5))
    sup.add(ServiceSpec("sleeper", ["sleep", "60"], restart=Restart.ALWAYS, stop_timeout=5))
    sup.start()
    try:
        assert sup.wait_for("forker", [State.RUNNING], T) and sup.wait_for("sleeper", [State.RUNNING], T)
        assert sup.logs("forker").wait_for_more(0, T)
        tree = sup.cgroups
        assert tree is not None
        pid = sup.stats()["forker"]
        members = tree.pids("forker")
        # The main process and the child it forked at once are both in the service's group.
        assert pid in members and len(members) == 2
        # the child joins its group before it execs the program; under load that may lag RUNNING
        assert poll(lambda: tree.pids("sleeper") == [sup.stats()["sleeper"]])
        own = Path(f"/proc/{pid}/cgroup").read_text()
        assert f"/{cgroot.name}/forker" in own
        # The group measures CPU and memory (memory.current, or the members' RSS on a hybrid host).
        assert poll(lambda: (tree.usage("forker") or Usage(0, 0, "")).cpu_usec > 0)
        usage = sup.usage()
        forker_pid, forker = usage["forker"]
        assert forker_pid == pid and forker is not None and forker.source == "cgroup"
        assert forker.memory_bytes >= 8 << 20
        assert usage["sleeper"][1] is not None
    finally:
        sup.shutdown(timeout=5)
    # A stopped service's group is removed once its last process is gone.
    for name in ("forker", "sleeper"):
        _kill_all(CgroupTree(cgroot), name)
        assert CgroupTree(cgroot).remove(name)


def test_unusable_root_runs_services_without_groups(tmp_path: Path) -> None:
    # A root that cannot be a cgroup (a plain directory has no cgroup.procs): services still run.
    sup = Supervisor(log_dir=None, cgroup_root=tmp_path / "not-a-cgroup" / "deeper" / "x")
    (tmp_path / "not-a-cgroup").write_text("a file, so the root cannot be made")
    sup.add(ServiceSpec("sleeper", ["sleep", "60"], restart=Restart.ALWAYS, stop_timeout=5))
    sup.start()
    try:
        assert sup.wait_for("sleeper", [State.RUNNING], T)
        pid, usage = sup.usage()["sleeper"]
        # Figures then come from /proc, for the main process.
        assert usage is not None and usage.source == "proc" and usage.memory_bytes > 0 and pid is not None
    finally:
        sup.shutdown(timeout=5)


def test_proc_usage_of_this_process() -> None:
    sum(range(200000))
    usage = proc_usage(os.getpid())
    assert usage is not None and usage.cpu_usec > 0 and usage.memory_bytes == rss_bytes(os.getpid()) > 0
    assert proc_usage(2**22 + 12345) is None
