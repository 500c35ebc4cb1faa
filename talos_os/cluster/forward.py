"""Port forwards from 127.0.0.1 on the host into the cluster's namespace: one small process.

It binds every listener on 127.0.0.1 first (in the host's namespace), then enters the cluster's
namespace with setns(): a socket keeps the namespace it was made in, so the listeners stay on the
host's loopback while every outgoing connection is made inside the cluster network. The host never
gets a route to the nodes.

Host forwards go the other way (``reverse:ADDR:PORT=HOSTPORT``): a listener inside the namespace
(on the bridge's address) whose connections are made from the host's namespace to
``127.0.0.1:HOSTPORT``, so nodes can pull from a registry on the host's loopback and reach nothing
else of the host.

Run as ``python -m talos_os.cluster.forward NETNS PORTS_FILE SPEC...``; it writes
``{KEY: local port}`` to PORTS_FILE (temp name, then rename) once it is listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from talos_os.cluster.state import ClusterError

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT = 10.0
# asyncio keeps only weak references to tasks, and a server-side stream only a weak one to its
# reader: without a strong reference a connection's relay is garbage-collected mid-way.
_LIVE: set[asyncio.Task[None]] = set()


def setns(fd: int) -> None:
    """Move this process's network namespace to the one ``fd`` refers to (as ``ip netns exec`` does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_fd(netns: str, run_dir: Path = Path("/run/netns")) -> int:
    return os.open(run_dir / netns, os.O_RDONLY | os.O_CLOEXEC)


def parse_target(spec: str) -> tuple[str, str, int]:
    """``KEY=HOST:PORT`` (KEY may itself hold ``:``) -> (key, host, port)."""
    key, sep, dest = spec.rpartition("=")
    host, _, port = dest.rpartition(":")
    if not sep or not key or not host or not port.isdigit():
        raise ValueError(f"forward {spec!r} is not KEY=HOST:PORT")
    return key, host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()


async def _connect(host: str, port: int, namespace: tuple[int, int] | None) -> socket.socket:
    """A connected socket; with ``namespace`` = (fd to make it in, fd to return to) made in the first."""
    if namespace is not None:
        setns(namespace[0])
    try:
        sock = socket.socket()
    finally:
        if namespace is not None:
            setns(namespace[1])
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _relay(
    host: str,
    port: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    namespace: tuple[int, int] | None = None,
) -> None:
    task = asyncio.current_task()
    if task is not None:
        _LIVE.add(task)
        task.add_done_callback(_LIVE.discard)
    try:
        sock = await asyncio.wait_for(_connect(host, port, namespace), CONNECT_TIMEOUT)
        up_reader, up_writer = await asyncio.open_connection(sock=sock)
    except (TimeoutError, OSError):
        writer.close()  # the node is not listening (yet): the client sees the connection close
        return
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    for w in (writer, up_writer):
        with contextlib.suppress(Exception):
            w.close()


async def serve(
    netns: str,
    targets: Mapping[str, tuple[str, int]],
    ports_file: Path,
    reverse: Mapping[str, int] | None = None,
) -> None:
    """Listen on 127.0.0.1 for ``targets`` and (inside the namespace) on ``reverse`` ADDR:PORT -> host port."""
    host_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    cluster_ns = netns_fd(netns)
    servers = []
    ports: dict[str, int] = {}
    for key, (host, port) in targets.items():

        async def handler(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, h: str = host, p: int = port
        ) -> None:
            await _relay(h, p, r, w)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        ports[key] = int(server.sockets[0].getsockname()[1])
    setns(cluster_ns)
    for listen, host_port in (reverse or {}).items():
        address, _, listen_port = listen.rpartition(":")

        async def back(r: asyncio.StreamReader, w: asyncio.StreamWriter, p: int = host_port) -> None:
            await _relay("127.0.0.1", p, r, w, namespace=(host_ns, cluster_ns))

        servers.append(await asyncio.start_server(back, address, int(listen_port)))
    tmp = ports_file.with_name(f".{ports_file.name}.tmp")
    tmp.write_text(json.dumps(ports, indent=2) + "\n")
    os.replace(tmp, ports_file)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str]) -> int:
    netns, ports_file, *specs = argv
    targets = {}
    reverse = {}
    for spec in specs:
        if spec.startswith("reverse:"):
            listen, _, host_port = spec.removeprefix("reverse:").rpartition("=")
            reverse[listen] = int(host_port)
        else:
            key, host, port = parse_target(spec)
            targets[key] = (host, port)
    asyncio.run(serve(netns, targets, Path(ports_file), reverse))
    return 0


def start(
    netns: str,
    targets: Mapping[str, tuple[str, int]],
    directory: Path,
    reverse: Mapping[str, int] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, int]]:
    """Start the forwarder detached (it outlives osctl); returns its pid and the ports it bound.

    ``reverse`` maps ``ADDR:PORT`` inside the namespace to a port on the host's 127.0.0.1."""
    ports_file = directory / "forwards.json"
    ports_file.unlink(missing_ok=True)
    specs = [f"{key}={host}:{port}" for key, (host, port) in targets.items()]
    specs += [f"reverse:{listen}={port}" for listen, port in (reverse or {}).items()]
    with open(directory / "forwarder.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "talos_os.cluster.forward", netns, str(ports_file), *specs],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    (directory / "forwarder.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ports_file.exists():
            return proc.pid, json.loads(ports_file.read_text())
        if proc.poll() is not None:
            tail = (directory / "forwarder.log").read_text(errors="replace")[-500:]
            raise ClusterError(f"the port forwarder exited at start ({tail.strip()})")
        time.sleep(0.05)
    raise ClusterError(
        f"the port forwarder did not start within {timeout:.0f} s (see {directory}/forwarder.log)"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
