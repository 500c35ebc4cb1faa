"""osd figures for `make bench`: Version latency over mutual TLS and service-log streaming throughput.

Everything runs on the host, on loopback: osd with an identity issued from a freshly generated
cluster, a real supervisor behind a real control socket, a real mTLS client. Run alone with
``python -m tools.bench_osd``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# No `import grpc` here: talos_os.osd and talos_os.osctl load it after setting its TLS policy.
from talos_os import pki
from talos_os.api.gen import node_pb2 as pb
from talos_os.api.gen import node_pb2_grpc as pb_grpc
from talos_os.config import loads
from talos_os.config.generate import generate
from talos_os.init.control import ControlServer, supervisor_handlers
from talos_os.init.supervisor import Restart, ServiceSpec, State, Supervisor
from talos_os.osctl.client import Credentials, Target, channel
from talos_os.osd.auth import server_identity
from talos_os.osd.server import Osd, Settings

VERSION_CALLS = 2000
LOG_MB = 32
LINE = 120  # bytes per log line, newline included
# Writes LOG_MB of 120-byte lines, then idles so the ring keeps them.
SPEW = """
import sys, time
line = ("x" * 111)
out = sys.stdout
for i in range({count}):
    out.write(f"{{i:08d}} {{line}}\\n")
out.flush()
time.sleep(3600)
"""


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def measure() -> dict[str, float]:
    """The figures: Version p50/p99 in ms, log streaming in MB/s (best of 3) and lines/s."""
    files = generate("bench", "https://127.0.0.1:6443").files()
    config = loads(files["init.yaml"])
    assert config.machine.ca.key is not None
    ca = pki.CertKey.from_b64(config.machine.ca.crt, config.machine.ca.key)
    client = pki.issue_client_certificate(ca, "bench", pki.ROLE_ADMIN)
    count = LOG_MB * 1_000_000 // LINE
    sup = Supervisor(log_dir=None)
    sup.add(
        ServiceSpec(
            "spew",
            [sys.executable, "-c", SPEW.format(count=count)],
            restart=Restart.NEVER,
            log_lines=count + 10,
            log_bytes=(LOG_MB + 8) * 1_000_000,
            stop_timeout=2,
        )
    )
    sup.start()
    with tempfile.TemporaryDirectory(prefix="bench-osd-") as tmp:
        handlers = supervisor_handlers(sup, reboot=lambda: None, shutdown=lambda: None)
        with ControlServer(Path(tmp) / "init.sock", handlers, allowed_uids={os.getuid()}) as control:
            identity, _ = server_identity(config, ["127.0.0.1"], "bench")
            settings = Settings(control_socket=control.path)
            with Osd(identity, ca.cert_pem, settings, address="127.0.0.1", port=0) as osd:
                creds = Credentials(ca=ca.cert_pem, crt=client.cert_pem, key=client.key_pem)
                with channel(Target("bench", "127.0.0.1", osd.port), creds) as ch:
                    stub = pb_grpc.NodeStub(ch)
                    figures = _version_latency(stub)
                    if not sup.wait_for("spew", [State.RUNNING], 30):
                        raise RuntimeError("the log spewing service did not start")
                    buf = sup.logs("spew")
                    deadline = time.monotonic() + 120
                    while buf.cursor < count and time.monotonic() < deadline:
                        buf.wait_for_more(buf.cursor, 1.0)
                    figures.update(_log_throughput(stub, count))
    sup.shutdown(timeout=2)
    return figures


def _version_latency(stub: pb_grpc.NodeStub) -> dict[str, float]:
    empty = pb.Empty()
    for _ in range(100):  # warm up: connection, TLS session, thread pool
        stub.Version(empty, timeout=10)
    samples = []
    for _ in range(VERSION_CALLS):
        start = time.perf_counter()
        stub.Version(empty, timeout=10)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"version_p50_ms": _percentile(samples, 0.50), "version_p99_ms": _percentile(samples, 0.99)}


def _log_throughput(stub: pb_grpc.NodeStub, count: int) -> dict[str, float]:
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        size = lines = 0
        for chunk in stub.Logs(pb.LogsRequest(id="spew"), timeout=120):
            size += len(chunk.bytes)
            lines += chunk.bytes.count(b"\n")
        seconds = time.perf_counter() - start
        if lines < count:
            raise RuntimeError(f"log stream delivered {lines} of {count} lines")
        runs.append((size / seconds / 1e6, lines / seconds, size))
    mbps, lps, size = max(runs)
    return {
        "logs_mb_s": mbps,
        "logs_lines_s": lps,
        "logs_mb": size / 1e6,
        "logs_mb_s_median": statistics.median(r[0] for r in runs),
    }


def report() -> None:
    """Print the osd figures (one line each), as tools/bench.py does for the others."""
    f = measure()
    print(
        f"osd Version over mutual TLS 1.3 (loopback, {VERSION_CALLS} calls, one channel): "
        f"p50 {f['version_p50_ms']:.2f} ms, p99 {f['version_p99_ms']:.2f} ms"
    )
    print(
        f"osd log streaming (Logs of a {f['logs_mb']:.0f} MB service log, loopback mTLS): "
        f"{f['logs_mb_s']:.1f} MB/s best of 3 (median {f['logs_mb_s_median']:.1f}), "
        f"{f['logs_lines_s'] / 1000:.0f}k lines/s"
    )


if __name__ == "__main__":
    report()
