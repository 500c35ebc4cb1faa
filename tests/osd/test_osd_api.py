"""Every method of the node API against a loopback osd, a real supervisor and real files."""

from __future__ import annotations

import io
import os
import queue
import stat
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from osdenv import KMSG_RECORDS, Cluster, Node, T, connect, rpc_error

from talos_os import __version__, pki
from talos_os.api.gen import node_pb2 as pb
from talos_os.init.supervisor import State
from talos_os.osd.server import Osd, Settings

E = pb.Empty()


def test_version(node: Node, cluster: Cluster) -> None:
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        v = stub.Version(E, timeout=T)
    assert v.tag == __version__ and v.api == "v1"
    assert v.kernel == os.uname().release and v.arch == os.uname().machine
    assert v.python and v.grpc == grpc.__version__


def test_service_list(node: Node, cluster: Cluster) -> None:
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        services = {s.id: s for s in stub.ServiceList(E, timeout=T).services}
    assert set(services) == {"ticker", "sleeper", "once"}
    sleeper = services["sleeper"]
    assert sleeper.state == "running" and sleeper.pid == node.supervisor.stats()["sleeper"]
    assert not sleeper.has_exit_code and sleeper.since > 0
    once = services["once"]
    assert once.state == "finished" and once.has_exit_code and once.exit_code == 0 and once.pid == 0


def test_service_stop_start_restart(node: Node, cluster: Cluster) -> None:
    sup = node.supervisor
    with connect(node, cluster.client()) as stub:
        stopped = stub.ServiceStop(pb.ServiceRequest(id="sleeper"), timeout=T)
        assert (stopped.id, stopped.done, stopped.message) == ("sleeper", True, "stopped")
        assert sup.info("sleeper").state == State.STOPPED
        started = stub.ServiceStart(pb.ServiceRequest(id="sleeper"), timeout=T)
        assert started.done and started.message == "started"
        node.wait_running("sleeper")
        again = stub.ServiceStart(pb.ServiceRequest(id="sleeper"), timeout=T)
        assert not again.done and again.message == "already running"
        pid = sup.stats()["sleeper"]
        assert stub.ServiceRestart(pb.ServiceRequest(id="sleeper"), timeout=T).done
        assert node.wait_running("sleeper") != pid
        missing = rpc_error(lambda: stub.ServiceStop(pb.ServiceRequest(id="nope"), timeout=T))
        assert missing.code() == grpc.StatusCode.NOT_FOUND and missing.details() == "no service named 'nope'"
        empty = rpc_error(lambda: stub.ServiceStart(pb.ServiceRequest(), timeout=T))
        assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_reader_cannot_control_services(node: Node, cluster: Cluster) -> None:
    pid = node.supervisor.stats()["sleeper"]
    with connect(node, cluster.client(pki.ROLE_READER, "viewer")) as stub:
        for method in (stub.ServiceStop, stub.ServiceStart, stub.ServiceRestart):
            err = rpc_error(lambda m=method: m(pb.ServiceRequest(id="sleeper"), timeout=T))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "needs os:admin" in err.details() and "'viewer' has os:reader" in err.details()
    assert node.supervisor.stats()["sleeper"] == pid


def test_admin_actions_reach_the_init(node: Node, cluster: Cluster) -> None:
    node.actions.clear()
    with connect(node, cluster.client()) as stub:
        assert stub.Reboot(E, timeout=T).message == "rebooting"
        assert stub.Shutdown(E, timeout=T).message == "shutting down"
        assert stub.Reset(E, timeout=T).message == "resetting"
    assert node.actions == ["reboot", "shutdown", "reset"]
    node.actions.clear()


def test_stats(node: Node, cluster: Cluster) -> None:
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        stats = {s.id: s for s in stub.Stats(E, timeout=T).stats}
    assert set(stats) == {"ticker", "sleeper", "once"}
    ticker = stats["ticker"]
    assert ticker.namespace == "system" and ticker.pid == node.supervisor.stats()["ticker"]
    assert ticker.memory_bytes > 1 << 20  # a Python interpreter
    assert ticker.cpu_usage_usec > 0
    assert ticker.source == ("cgroup" if node.cgroups else "proc")
    assert stats["once"].pid == 0


def test_processes(node: Node, cluster: Cluster) -> None:
    # the sleeper joins its cgroup in a Python one-liner, then execs sleep: wait for the exec
    exe = Path(f"/proc/{node.supervisor.stats()['sleeper']}/exe")
    deadline = time.monotonic() + T
    while not os.readlink(exe).endswith("sleep") and time.monotonic() < deadline:
        time.sleep(0.05)
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        everything = stub.Processes(pb.ProcessesRequest(), timeout=T).processes
        system = stub.Processes(pb.ProcessesRequest(namespace="system"), timeout=T).processes
    by_pid = {p.pid: p for p in everything}
    sleeper = by_pid[node.supervisor.stats()["sleeper"]]
    assert (sleeper.namespace, sleeper.id) == ("system", "sleeper")
    assert sleeper.status in ("sleeping", "running")  # "running" for a moment after a restart
    assert sleeper.image.endswith("sleep"), sleeper
    assert sleeper.command == "sleep 3600", sleeper
    me = by_pid[os.getpid()]
    assert me.namespace == "host", me
    assert me.rss_bytes > 0 and me.threads >= 1 and me.cpu_seconds > 0, me
    assert {p.id for p in system} >= {"sleeper", "ticker"}, system
    assert {p.namespace for p in system} == {"system"}, system
    kernel = [p for p in everything if p.namespace == "kernel"]  # if kernel threads are visible here
    assert all(p.image == "" and p.command.startswith("[") for p in kernel), kernel


def _logs(stub: object, **kw: object) -> str:
    return b"".join(d.bytes for d in stub.Logs(pb.LogsRequest(**kw), timeout=T)).decode()  # type: ignore[attr-defined]


def test_logs_all_and_tail(node: Node, cluster: Cluster) -> None:
    node.tick(3)
    node.wait_log_lines("ticker", node.ticks + 1)
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        everything = _logs(stub, id="ticker").splitlines()
        assert everything[0] == "ticker ready" and everything[-1] == f"tick {node.ticks}"
        assert _logs(stub, id="ticker", tail=2, has_tail=True).splitlines() == [
            f"tick {node.ticks - 1}",
            f"tick {node.ticks}",
        ]
        assert _logs(stub, id="ticker", tail=0, has_tail=True) == ""
        assert _logs(stub, id="once") == "once done\n"
        err = rpc_error(lambda: _logs(stub, id="nope"))
        assert err.code() == grpc.StatusCode.NOT_FOUND


def test_logs_follow_streams_new_lines(node: Node, cluster: Cluster) -> None:
    received: queue.Queue[str] = queue.Queue()
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        call = stub.Logs(pb.LogsRequest(id="ticker", follow=True, tail=1, has_tail=True))

        def read() -> None:
            try:
                for chunk in call:
                    for line in chunk.bytes.decode().splitlines():
                        received.put(line)
            except grpc.RpcError:
                received.put("<end>")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        first = node.ticks
        assert received.get(timeout=T) == (f"tick {first}" if first else "ticker ready")
        # Lines the service prints while we stream arrive on the open stream.
        node.tick(3)
        assert [received.get(timeout=T) for _ in range(3)] == [f"tick {first + i}" for i in (1, 2, 3)]
        node.tick(1)
        assert received.get(timeout=T) == f"tick {first + 4}"
        call.cancel()
        assert received.get(timeout=T) == "<end>"
        reader.join(T)


def _dmesg(stub: object, **kw: object) -> list[str]:
    data = b"".join(d.bytes for d in stub.Dmesg(pb.DmesgRequest(**kw), timeout=T))  # type: ignore[attr-defined]
    return data.decode().splitlines()


def test_dmesg_from_a_file(node: Node, cluster: Cluster) -> None:
    expected = [
        "[    0.000000] Linux version 6.1.0-talos (builder@talos) #1 SMP",
        "[    1.500000] ACPI: something odd",
        "[    2.250001] virtio_net virtio0 eth0: link up",
    ]
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        assert _dmesg(stub) == expected
        assert _dmesg(stub, tail=1, has_tail=True) == expected[-1:]


def _follow_dmesg(node: Node, cluster: Cluster, kmsg: Path, append: Callable[[str], None]) -> None:
    """Follow a kernel log at ``kmsg`` through a dedicated osd; ``append(text)`` adds records."""
    settings = Settings(control_socket=node.settings.control_socket, kmsg=kmsg)
    with Osd(node.osd.identity, node.osd.ca_pem, settings, address="127.0.0.1", port=0) as osd:
        other = Node(node.root, osd, node.supervisor, node.control, settings, node.trigger)
        with connect(other, cluster.client(pki.ROLE_READER)) as stub:
            call = stub.Dmesg(pb.DmesgRequest(follow=True), timeout=T)  # a missing line fails, not hangs
            lines = (line for chunk in call for line in chunk.bytes.decode().splitlines())
            append("6,10,3000000,-;first record\n")
            assert next(lines) == "[    3.000000] first record"
            append("6,11,4000000,-;second record\n SUBSYSTEM=x\n")
            assert next(lines) == "[    4.000000] second record"
            call.cancel()


def test_dmesg_follow_a_growing_file(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")

    def append(text: str) -> None:
        with open(kmsg, "a") as f:
            f.write(text)

    _follow_dmesg(node, cluster, kmsg, append)


def test_dmesg_follow_a_fifo(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg.fifo"
    os.mkfifo(kmsg)
    writer: list[int] = []

    def append(text: str) -> None:
        if not writer:  # osd opened the read end (non-blocking) by now: the first open waits for it
            writer.append(os.open(kmsg, os.O_WRONLY))
        os.write(writer[0], text.encode())

    try:
        _follow_dmesg(node, cluster, kmsg, append)
    finally:
        for fd in writer:
            os.close(fd)


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="/dev/kmsg is not readable here")
def test_dmesg_of_the_host_kernel(node: Node, cluster: Cluster) -> None:
    settings = Settings(control_socket=node.settings.control_socket)  # the default: /dev/kmsg
    with Osd(node.osd.identity, node.osd.ca_pem, settings, address="127.0.0.1", port=0) as osd:
        other = Node(node.root, osd, node.supervisor, node.control, settings, node.trigger)
        with connect(other, cluster.client(pki.ROLE_READER)) as stub:
            lines = _dmesg(stub, tail=5, has_tail=True)
    assert 1 <= len(lines) <= 5
    assert all(line.startswith("[") and "] " in line for line in lines)


def test_kubeconfig(node: Node, cluster: Cluster) -> None:
    path = node.settings.kubeconfig
    with connect(node, cluster.client()) as stub:
        err = rpc_error(lambda: stub.Kubeconfig(E, timeout=T))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "not been bootstrapped" in err.details()
        path.parent.mkdir(parents=True, exist_ok=True)
        pki.write_secret(path, b"apiVersion: v1\nkind: Config\n")
        assert stub.Kubeconfig(E, timeout=T).bytes == b"apiVersion: v1\nkind: Config\n"
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        err = rpc_error(lambda: stub.Kubeconfig(E, timeout=T))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_network_mounts_memory(node: Node, cluster: Cluster) -> None:
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        interfaces = {i.name: i for i in stub.Interfaces(E, timeout=T).interfaces}
        routes = stub.Routes(E, timeout=T).routes
        mounts = {m.target: m for m in stub.Mounts(E, timeout=T).mounts}
        memory = stub.Memory(E, timeout=T)
    lo = interfaces["lo"]
    assert "127.0.0.1/8" in lo.addresses and "LOOPBACK" in lo.flags and "UP" in lo.flags and lo.mtu > 0
    assert all(r.table != 255 for r in routes)  # the kernel's local table is left out
    assert all(r.family in ("inet", "inet6") and "/" in r.destination for r in routes)
    root = mounts["/"]
    st = os.statvfs("/")
    assert root.size == st.f_blocks * st.f_frsize and 0 < root.used <= root.size
    assert mounts["/proc"].fstype == "proc"
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert memory.total == int(meminfo["MemTotal"].split()[0]) * 1024
    assert 0 < memory.available <= memory.total and memory.fields["MemTotal"] == memory.total


def _tree(base: Path) -> Path:
    top = base / "data"
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "hello.txt").write_text("hello\n")
    (top / "sub" / "blob.bin").write_bytes(os.urandom(300_000))
    (top / "sub" / "deeper" / "mode.sh").write_text("#!/bin/sh\n")
    (top / "sub" / "deeper" / "mode.sh").chmod(0o750)
    (top / "link").symlink_to("hello.txt")
    return top


def test_copy_out_round_trip(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    top = _tree(tmp_path / "node")
    with connect(node, cluster.client()) as stub:
        data = b"".join(d.bytes for d in stub.CopyOut(pb.CopyOutRequest(path=str(top)), timeout=T))
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        # The data filter exists from Python 3.11.4 (Debian 12 has 3.11.2); the archive is our own.
        tar.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # type: ignore[arg-type]
    copy = out / "data"
    originals = sorted(p.relative_to(top) for p in top.rglob("*"))
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == originals
    for rel in originals:
        a, b = top / rel, copy / rel
        if a.is_symlink():
            assert os.readlink(b) == os.readlink(a)
        elif a.is_file():
            assert b.read_bytes() == a.read_bytes()
            assert stat.S_IMODE(b.stat().st_mode) == stat.S_IMODE(a.stat().st_mode)
    with connect(node, cluster.client()) as stub:
        one = b"".join(
            d.bytes for d in stub.CopyOut(pb.CopyOutRequest(path=str(top / "hello.txt")), timeout=T)
        )
        with tarfile.open(fileobj=io.BytesIO(one)) as tar:
            assert tar.getnames() == ["hello.txt"]
        missing = rpc_error(lambda: stub.CopyOut(pb.CopyOutRequest(path=str(top / "nope")), timeout=T))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        relative = rpc_error(lambda: stub.CopyOut(pb.CopyOutRequest(path="data"), timeout=T))
        assert relative.code() == grpc.StatusCode.FAILED_PRECONDITION
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        err = rpc_error(lambda: stub.CopyOut(pb.CopyOutRequest(path=str(top)), timeout=T))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_copy_out_stops_when_the_client_hangs_up(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for i in range(40):
        (big / f"f{i}").write_bytes(os.urandom(256 * 1024))
    with connect(node, cluster.client()) as stub:
        call = stub.CopyOut(pb.CopyOutRequest(path=str(big)))
        assert next(call).bytes  # the stream started; now walk away
        call.cancel()
    # The tar thread notices and ends: no thread named after the path lingers.
    deadline = time.monotonic() + T
    while any(t.name == f"tar {big}" for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _read(stub: object, path: str | Path) -> bytes:
    return b"".join(d.bytes for d in stub.Read(pb.ReadRequest(path=str(path)), timeout=T))  # type: ignore[attr-defined]


def test_read_and_secrets(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    public = node.public / "public.txt"
    public.write_bytes(b"x" * 200_000)
    public.chmod(0o644)
    private = node.public / "private.key"
    private.write_text("secret\n")
    private.chmod(0o600)
    laundered = node.public / "innocent"
    laundered.symlink_to(private)
    outside = tmp_path / "outside.txt"  # world-readable, but not under a reader tree
    outside.write_text("outside\n")
    outside.chmod(0o644)
    config = node.settings.secret_paths[0]
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        assert _read(stub, public) == public.read_bytes()
        assert _read(stub, "/proc/self/status").startswith(b"Name:")
        for path in (private, laundered, config, outside):
            err = rpc_error(lambda p=path: _read(stub, p))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "needs os:admin" in err.details()
    with connect(node, cluster.client()) as stub:
        assert _read(stub, private) == b"secret\n"
        assert _read(stub, outside) == b"outside\n"
        assert _read(stub, config).decode() == cluster.config_text
        directory = rpc_error(lambda: _read(stub, tmp_path))
        assert directory.code() == grpc.StatusCode.FAILED_PRECONDITION and "osctl cp" in directory.details()
        missing = rpc_error(lambda: _read(stub, tmp_path / "nope"))
        assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_init_unreachable_is_unavailable(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    settings = Settings(control_socket=tmp_path / "no-init.sock")
    with (
        Osd(node.osd.identity, node.osd.ca_pem, settings, address="127.0.0.1", port=0) as osd,
        connect(
            Node(node.root, osd, node.supervisor, node.control, settings, node.trigger), cluster.client()
        ) as stub,
    ):
        err = rpc_error(lambda: stub.ServiceList(E, timeout=T))
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "control socket" in err.details()
        # Processes still answer (names come from cgroups then).
        assert stub.Processes(pb.ProcessesRequest(), timeout=T).processes
    assert KMSG_RECORDS  # the shared kernel-log fixture is untouched
