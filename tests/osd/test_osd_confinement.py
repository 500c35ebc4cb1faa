"""Routes from ``os:reader`` to key material or root-only content, each closed; errors as proper statuses.

Each test is one route an attacker with a reader certificate took against the old ``Read``: magic
links into other mount namespaces and open descriptors, /proc files whose content depends on who
opens them, and requests that used to end as UNKNOWN.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from osdenv import Cluster, Node, T, connect, rpc_error

from talos_os import pki
from talos_os.api.gen import node_pb2 as pb
from talos_os.osd import server
from talos_os.osd.opener import READER_ID
from talos_os.osd.server import Osd, Settings


def _read(stub: object, path: str | Path) -> bytes:
    return b"".join(d.bytes for d in stub.Read(pb.ReadRequest(path=str(path)), timeout=T))  # type: ignore[attr-defined]


def _refused(stub: object, path: str | Path) -> grpc.RpcError:
    err = rpc_error(lambda: _read(stub, path))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (err.code(), err.details())
    return err


@pytest.fixture
def namespaced(node: Node) -> Iterator[tuple[int, Path]]:
    """A process in its own mount namespace, where ``DIR/config.yaml`` is a different file.

    It runs as the very uid that opens files for readers, so ptrace rules would let that uid through
    ``/proc/PID/root``: only the refusal of magic links stands in the way.

        In osd's namespace the same path holds a harmless world-readable decoy, so a check made on the
        path in osd's namespace (the old ``realpath``) passes while the open lands on the other file.
    """
    shadow = node.public / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / "config.yaml").write_text("decoy\n")
    script = (
        f"mount -t tmpfs none {shadow} && printf 'token: other-namespace-secret\\n' > {shadow}/config.yaml "
        f"&& chmod 644 {shadow}/config.yaml && echo ready && exec setpriv --reuid={READER_ID} "
        f"--regid={READER_ID} --clear-groups sleep 60"
    )
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc.pid, shadow / "config.yaml"
    finally:
        proc.kill()
        proc.wait()


def test_no_route_into_another_mount_namespace(
    node: Node, cluster: Cluster, namespaced: tuple[int, Path]
) -> None:
    pid, path = namespaced
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    through = f"/proc/{pid}/root{path}"
    with connect(node, cluster.client()) as stub:
        assert _read(stub, through) == b"token: other-namespace-secret\n"  # the route is real
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        assert _read(stub, path) == b"decoy\n"
        err = _refused(stub, through)
        assert "magic link" in err.details()
        _refused(stub, f"/proc/{pid}/root{node.settings.secret_paths[0]}")
        _refused(stub, f"/proc/1/root{node.settings.secret_paths[0]}")  # EACCES once, UNKNOWN then
        _refused(stub, f"/proc/{pid}/cwd/{path.name}")


def test_no_route_to_open_descriptors(node: Node, cluster: Cluster) -> None:
    memfd = os.memfd_create("talos-test-secret")
    os.write(memfd, b"memfd secret\n")
    deleted = node.public / "deleted.key"
    deleted.write_text("deleted secret\n")
    deleted.chmod(0o600)
    held = os.open(deleted, os.O_RDONLY)
    deleted.unlink()
    try:
        routes = [
            f"/proc/{os.getpid()}/fd/{memfd}",
            f"/proc/{os.getpid()}/fd/{held}",
            f"/proc/self/fd/{held}",
        ]
        with connect(node, cluster.client()) as stub:
            assert _read(stub, routes[0]) == b"memfd secret\n"  # the route is real
        with connect(node, cluster.client(pki.ROLE_READER)) as stub:
            for route in routes:
                rpc = rpc_error(lambda r=route: _read(stub, r))
                assert rpc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    finally:
        os.close(memfd)
        os.close(held)


def _addresses(kallsyms: bytes) -> set[int]:
    return {int(line.split(b" ", 1)[0], 16) for line in kallsyms.splitlines()[:2000]}


def test_proc_files_are_opened_without_privilege(node: Node, cluster: Cluster) -> None:
    with connect(node, cluster.client()) as stub:
        admin_view = _addresses(_read(stub, "/proc/kallsyms"))
        assert _read(stub, f"/proc/{os.getpid()}/maps")
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        reader_view = _addresses(_read(stub, "/proc/kallsyms"))
        assert reader_view == {0}  # the kernel hides addresses from whoever lacks CAP_SYSLOG
        if admin_view == {0}:
            pytest.skip("this kernel hides kallsyms addresses from root too (kptr_restrict=2)")
        for pid in (1, os.getpid()):  # the init's and osd's own memory maps
            _refused(stub, f"/proc/{pid}/maps")
            _refused(stub, f"/proc/{pid}/environ")
        assert b"Name:" in _read(stub, "/proc/1/status")  # world-readable and the same for everyone


def test_symlinks_and_dotdot_cannot_leave_a_reader_tree(node: Node, cluster: Cluster) -> None:
    outside = node.root / "outside.txt"
    outside.write_text("outside\n")
    outside.chmod(0o644)
    link = node.public / "to-outside"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    inside = node.public / "inside.txt"
    inside.write_text("inside\n")
    inside.chmod(0o644)
    relative = node.public / "relative"
    relative.unlink(missing_ok=True)
    relative.symlink_to("inside.txt")
    with connect(node, cluster.client(pki.ROLE_READER)) as stub:
        assert _read(stub, relative) == b"inside\n"
        for path in (link, f"{node.public}/../{node.public.name}/inside.txt", f"/proc/../{outside}"):
            _refused(stub, path)


def test_errors_are_statuses_not_unknown(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    long_path = "/" + "a" * 20_000
    with connect(node, cluster.client()) as admin, connect(node, cluster.client(pki.ROLE_READER)) as reader:
        for stub in (admin, reader):
            nul = rpc_error(lambda s=stub: _read(s, "/proc/self/\0status"))
            assert nul.code() == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in nul.details()
            long = rpc_error(lambda s=stub: _read(s, long_path))
            assert long.code() == grpc.StatusCode.INVALID_ARGUMENT and len(long.details()) < 400
            copy = rpc_error(lambda s=stub: list(s.CopyOut(pb.CopyOutRequest(path=long_path), timeout=T)))
            assert copy.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
            assert len(copy.details()) < 400
        # /proc/PID/mem cannot be read at offset 0 (nothing is mapped there): an error mid-stream.
        mem = rpc_error(lambda: _read(admin, f"/proc/{os.getpid()}/mem"))
        assert mem.code() == grpc.StatusCode.INTERNAL and re.search(r"cannot read .*mem", mem.details())
        nul = rpc_error(lambda: list(admin.CopyOut(pb.CopyOutRequest(path="/tmp/\0x"), timeout=T)))
        assert nul.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Service ids: a 20 KB id (echoed, it broke grpc's metadata limit) or one with a newline.
        for ident in ("x" * 20_000, "ticker\nfake log line"):
            logs = rpc_error(lambda i=ident: list(reader.Logs(pb.LogsRequest(id=i), timeout=T)))
            start = rpc_error(lambda i=ident: admin.ServiceStart(pb.ServiceRequest(id=i), timeout=T))
            for err in (logs, start):
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.details()) < 400


def test_copy_out_skips_entries_that_vanish(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    top = tmp_path / "tree"
    top.mkdir()
    (top / "a-big").write_bytes(os.urandom(4 << 20))  # more than the stream buffers: the walk waits in it
    (top / "b-gone").write_text("here at the start\n")
    (top / "c-kept").write_text("kept\n")
    with connect(node, cluster.client()) as stub:
        call = stub.CopyOut(pb.CopyOutRequest(path=str(top)), timeout=T)
        first = next(call).bytes  # the walk has listed the tree and is inside a-big
        (top / "b-gone").unlink()
        os.truncate(top / "a-big", 1 << 20)  # shrinks under the reader
        data = first + b"".join(d.bytes for d in call)
        trailer = dict(call.trailing_metadata())
    assert trailer[server.SKIPPED_COUNT] == "2"
    assert json.loads(trailer[server.SKIPPED_PATHS]) == [
        f"{top / 'a-big'} (shrank while read; padded with zeros)",
        str(top / "b-gone"),
    ]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        names = tar.getnames()
        assert names == ["tree", "tree/a-big", "tree/c-kept"]
        member = tar.extractfile("tree/c-kept")
        assert member is not None and member.read() == b"kept\n"
        assert tar.getmember("tree/a-big").size == 4 << 20


def test_dmesg_carries_no_secret_whoever_wrote_it(node: Node, cluster: Cluster, tmp_path: Path) -> None:
    token = "u07hao.tdk7jp4l7ykd4022"
    key = pki.new_os_ca("dmesg-test").key_pem.decode().strip().splitlines()
    kmsg = tmp_path / "kmsg"
    records = [
        f"6,1,1000000,-;joining with token {token}",
        *(f"6,{i},2000000,-;{line}" for i, line in enumerate(key, 2)),
    ]
    kmsg.write_text("\n".join([*records, "6,99,3000000,-;after"]) + "\n")
    settings = Settings(control_socket=node.settings.control_socket, kmsg=kmsg)
    with Osd(node.osd.identity, node.osd.ca_pem, settings, address="127.0.0.1", port=0) as osd:
        other = Node(node.root, osd, node.supervisor, node.control, settings, node.trigger)
        with connect(other, cluster.client(pki.ROLE_READER)) as stub:
            text = b"".join(d.bytes for d in stub.Dmesg(pb.DmesgRequest(), timeout=T)).decode()
    assert "joining with token <redacted>" in text and "after" in text
    assert token not in text and not any(line in text for line in key[1:-1])
