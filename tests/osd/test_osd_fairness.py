"""One client cannot starve the API: followers are capped, admins keep a share, half-open connections time out."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from osdenv import Cluster, Node, T

from talos_os import pki
from talos_os.api.gen import node_pb2 as pb
from talos_os.api.gen import node_pb2_grpc as pb_grpc
from talos_os.osd import limits
from talos_os.osd.server import FD_LIMIT, Osd

E = pb.Empty()


@contextlib.contextmanager
def half_open(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections that never start their TLS handshake."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=T))
        yield socks
    finally:
        for s in socks:
            s.close()


def _channel(node: Node, cert: pki.CertKey) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(node.osd.ca_pem, cert.key_pem, cert.cert_pem)
    return grpc.secure_channel(node.address, creds)


def _timed_version(stub: pb_grpc.NodeStub) -> float:
    start = time.monotonic()
    stub.Version(E, timeout=1.0)
    return time.monotonic() - start


def test_followers_and_half_open_connections_do_not_starve_an_admin(node: Node, cluster: Cluster) -> None:
    cap = node.osd.admission.limits
    clients = [cluster.client(pki.ROLE_READER, f"follower-{i}") for i in range(50)]
    channels = [_channel(node, c) for c in clients]
    calls: list[grpc.Future] = []
    refused: list[str] = []
    done = threading.Semaphore(0)

    def finished(call: grpc.Future) -> None:
        if call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            refused.append(call.details())
        done.release()

    try:
        with half_open(node.port, 1000), _channel(node, cluster.client()) as admin_channel:
            admin = pb_grpc.NodeStub(admin_channel)
            assert _timed_version(admin) < 1.0
            for ch in channels:
                stub = pb_grpc.NodeStub(ch)
                for _ in range(4):  # 200 followers of a quiet service
                    call = stub.Logs(pb.LogsRequest(id="sleeper", follow=True))
                    call.add_done_callback(finished)
                    calls.append(call)
            for _ in range(200 - cap.follows):  # every follower over the cap is refused at once
                assert done.acquire(timeout=T)
            assert len(refused) == 200 - cap.follows
            assert "streams already follow logs on this node" in refused[0]
            assert node.osd.admission.running() == (cap.follows, cap.follows)
            # The admin is served at once, and readers still get their unary calls.
            assert max(_timed_version(admin) for _ in range(5)) < 1.0
            assert pb_grpc.NodeStub(channels[-1]).ServiceList(E, timeout=1.0).services
    finally:
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()
    deadline = time.monotonic() + T
    while node.osd.admission.running() != (0, 0):  # cancelled streams give their places back
        assert time.monotonic() < deadline, node.osd.admission.running()
        time.sleep(0.05)


def test_one_client_may_follow_only_a_few_logs(node: Node, cluster: Cluster) -> None:
    per_client = node.osd.admission.limits.follows_per_client
    ended = threading.Semaphore(0)
    with _channel(node, cluster.client(pki.ROLE_READER, "greedy")) as ch:
        stub = pb_grpc.NodeStub(ch)
        calls = [stub.Logs(pb.LogsRequest(id="sleeper", follow=True)) for _ in range(per_client + 1)]
        for c in calls:
            c.add_done_callback(lambda _c: ended.release())
        try:
            assert ended.acquire(timeout=T)
            refused = [c for c in calls if c.done()]
            assert len(refused) == 1 and refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"client 'greedy' already follows {per_client} logs" in refused[0].details()
        finally:
            for c in calls:
                c.cancel()


def test_readers_leave_admins_a_share() -> None:
    admission = limits.Admission(limits.Limits(follows=2, follows_per_client=1, reader_calls=3))
    with contextlib.ExitStack() as held:
        for i in range(3):
            held.enter_context(admission.admit(f"reader-{i}", admin=False, follow=False))
        with pytest.raises(limits.Refused, match="3 calls by readers are already running"):
            held.enter_context(admission.admit("reader-9", admin=False, follow=False))
        for i in range(10):  # admins are not counted against readers
            held.enter_context(admission.admit(f"admin-{i}", admin=True, follow=False))
        held.enter_context(admission.admit("admin", admin=True, follow=True))
        with pytest.raises(limits.Refused, match="already follows 1 logs"):
            held.enter_context(admission.admit("admin", admin=True, follow=True))
        held.enter_context(admission.admit("admin-2", admin=True, follow=True))
        with pytest.raises(limits.Refused, match="2 streams already follow logs"):
            held.enter_context(admission.admit("admin-3", admin=True, follow=True))
        assert admission.running() == (2, 3)
    assert admission.running() == (0, 0)
    # With the server's shares, admin follows plus reader calls leave a quarter of the workers.
    shares = limits.for_workers(64)
    assert shares.follows + shares.reader_calls <= 64 * 3 // 4


def test_half_open_connections_are_closed_after_the_handshake_timeout(node: Node) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))  # the kernel's default
    try:
        with (
            Osd(
                node.osd.identity,
                node.osd.ca_pem,
                node.settings,
                address="127.0.0.1",
                port=0,
                handshake_timeout=1.0,
            ) as osd,
            half_open(osd.port, 50) as socks,
        ):
            # osd raised its descriptor limit as far as it may (past the hard limit only with CAP_SYS_RESOURCE).
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= min(FD_LIMIT, hard)
            deadline = time.monotonic() + T
            for s in socks:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(1) == b""  # closed by osd, not by us
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
