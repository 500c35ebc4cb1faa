"""Config fetching against a real HTTP server on 127.0.0.1, and the retry helper."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from talos_os.lib.fetch import ConfigRef, FetchError, Progress, fetch_url
from talos_os.lib.retry import TransientError, backoff_delay, retry


class Script:
    """Responses to serve, in order; the last one repeats. Records every request path."""

    def __init__(self, *responses: tuple[int, bytes]) -> None:
        self.responses = list(responses)
        self.requests: list[str] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()

    def next(self, path: str) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append(path)
            return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]


def make_server(script: Script, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.auth.append(self.headers.get("Authorization"))
            status, body = script.next(self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server


@pytest.fixture
def serve() -> Iterator[list[ThreadingHTTPServer]]:
    servers: list[ThreadingHTTPServer] = []
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


def url_of(server: ThreadingHTTPServer, path: str = "/config.yaml") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_retries_503_then_succeeds(serve: list[ThreadingHTTPServer]) -> None:
    script = Script((503, b"busy"), (503, b"busy"), (200, b"machine: {}\n"))
    serve.append(make_server(script))
    sleeps: list[float] = []
    events: list[Progress] = []
    data = fetch_url(
        url_of(serve[0]), base=0.5, cap=10, jitter=0.0, sleep=sleeps.append, progress=events.append
    )
    assert data == b"machine: {}\n"
    assert script.requests == ["/config.yaml"] * 3
    assert sleeps == [0.5, 1.0]  # exponential, no jitter
    phases = [e.phase for e in events]
    assert phases == ["connecting", "retrying", "connecting", "retrying", "connecting", "downloading", "done"]
    retrying = [e for e in events if e.phase == "retrying"]
    assert all(e.error and "503" in e.error for e in retrying)
    assert [e.delay for e in retrying] == [0.5, 1.0]
    assert events[-1].received == len(data) and events[-1].total == len(data) and events[-1].attempt == 3


def test_connection_refused_is_retried(serve: list[ThreadingHTTPServer]) -> None:
    # Find a free port, leave it closed (connection refused), and start the server during the backoff.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Script((200, b"late config"))
    sleeps: list[float] = []

    def sleep(delay: float) -> None:
        sleeps.append(delay)
        if not serve:
            serve.append(make_server(script, port))

    assert fetch_url(f"http://127.0.0.1:{port}/c", jitter=0.0, base=0.1, sleep=sleep) == b"late config"
    assert sleeps == [0.1]
    assert script.requests == ["/c"]


def test_404_is_permanent(serve: list[ThreadingHTTPServer]) -> None:
    script = Script((404, b"nope"))
    serve.append(make_server(script))
    sleeps: list[float] = []
    with pytest.raises(FetchError, match=r"HTTP 404.*no config at this URL"):
        fetch_url(url_of(serve[0], "/missing.yaml"), sleep=sleeps.append)
    assert script.requests == ["/missing.yaml"]
    assert sleeps == []


def test_gives_up_after_attempts(serve: list[ThreadingHTTPServer]) -> None:
    script = Script((500, b"broken"))
    serve.append(make_server(script))
    with pytest.raises(FetchError, match=r"HTTP 500.*gave up after 3 attempts"):
        fetch_url(url_of(serve[0]), attempts=3, deadline=None, sleep=lambda _d: None)
    assert len(script.requests) == 3


def test_size_limit(serve: list[ThreadingHTTPServer]) -> None:
    script = Script((200, b"x" * 2000))
    serve.append(make_server(script))
    with pytest.raises(FetchError, match="more than the limit of 1000"):
        fetch_url(url_of(serve[0]), max_bytes=1000, sleep=lambda _d: None)
    assert len(script.requests) == 1  # not retried
    assert fetch_url(url_of(serve[0]), max_bytes=2000, attempts=1) == b"x" * 2000


def test_size_limit_without_content_length(serve: list[ThreadingHTTPServer]) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"y" * 5000)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    serve.append(server)
    with pytest.raises(FetchError, match="larger than the limit of 100 bytes"):
        fetch_url(url_of(server), max_bytes=100, attempts=1)


def test_bad_scheme_and_redaction(serve: list[ThreadingHTTPServer]) -> None:
    with pytest.raises(FetchError, match="only http:// and https://"):
        fetch_url("ftp://127.0.0.1/x")
    script = Script((403, b""))
    serve.append(make_server(script))
    port = serve[0].server_address[1]
    with pytest.raises(FetchError) as info:
        fetch_url(f"http://user:s%40cret@127.0.0.1:{port}/c", sleep=lambda _d: None)
    assert "cret" not in str(info.value)
    assert "HTTP 403" in str(info.value)
    assert script.auth == ["Basic " + base64.b64encode(b"user:s@cret").decode()]


def test_config_ref(serve: list[ThreadingHTTPServer]) -> None:
    assert ConfigRef("inline", data=b"abc").resolve() == b"abc"
    serve.append(make_server(Script((200, b"remote"))))
    assert ConfigRef("url", url=url_of(serve[0])).resolve(lambda u: fetch_url(u, attempts=1)) == b"remote"
    assert ConfigRef("url", url="http://x/").resolve(lambda u: u.encode()) == b"http://x/"
    with pytest.raises(ValueError):
        ConfigRef("both", data=b"a", url="http://x/")
    with pytest.raises(ValueError):
        ConfigRef("neither")


# --- retry() and backoff_delay() --------------------------------------------------------------


def test_backoff_delay() -> None:
    assert [backoff_delay(n, base=1, cap=5, jitter=0) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert backoff_delay(3, base=1, cap=100, jitter=1.0, rng=lambda: 0.25) == 3.0  # full jitter
    assert backoff_delay(1, base=2, cap=100, jitter=0.5, rng=lambda: 1.0) == 1.0
    for _ in range(100):
        assert 0.0 <= backoff_delay(4, base=1, cap=100) <= 8.0


def test_retry_attempts_and_on_retry() -> None:
    calls = 0
    seen: list[tuple[int, str, float]] = []

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError(f"fail {calls}")
        return "ok"

    out = retry(
        flaky,
        attempts=5,
        base=1,
        jitter=0,
        sleep=lambda _d: None,
        on_retry=lambda n, e, d: seen.append((n, str(e), d)),
    )
    assert out == "ok"
    assert seen == [(1, "fail 1", 1.0), (2, "fail 2", 2.0)]

    calls = 0
    with pytest.raises(TransientError, match="fail 2"):
        retry(flaky, attempts=2, sleep=lambda _d: None)


def test_retry_does_not_retry_other_errors() -> None:
    calls = []

    def boom() -> None:
        calls.append(1)
        raise KeyError("permanent")

    with pytest.raises(KeyError):
        retry(boom, attempts=5, sleep=lambda _d: None)
    assert calls == [1]
    with pytest.raises(KeyError):
        retry(boom, attempts=2, retry_if=lambda e: isinstance(e, KeyError), sleep=lambda _d: None)
    assert len(calls) == 3


def test_retry_deadline_with_fake_clock() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(d: float) -> None:
        sleeps.append(d)
        now[0] += d

    def always() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError):
        retry(always, deadline=10.0, base=1, cap=4, jitter=0, sleep=sleep, clock=lambda: now[0])
    # 1 + 2 + 4 + (3 left of the budget) = 10 seconds, then one last attempt and give up.
    assert sleeps == [1, 2, 4, 3]


def test_retry_needs_a_budget() -> None:
    with pytest.raises(ValueError):
        retry(lambda: None)
    with pytest.raises(ValueError):
        retry(lambda: None, attempts=0)
