"""The IMDSv2 client against a loopback server that enforces the token protocol."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from platforms.aws.imds import (
    TOKEN_HEADER,
    TTL_HEADER,
    ImdsClient,
    ImdsDisabledError,
    ImdsError,
    fetch_aws_config,
)


@dataclass
class FakeImds:
    """In-memory IMDS: issues tokens, rejects GETs without a valid one, can throttle and expire."""

    user_data: bytes | None = b"#!talos\nmachine: {}\n"
    metadata: dict[str, str] = field(
        default_factory=lambda: {
            "instance-id": "i-0123456789abcdef0",
            "local-ipv4": "10.0.0.12",
            "local-hostname": "ip-10-0-0-12.ec2.internal",
            "hostname": "ip-10-0-0-12.ec2.internal",
            "placement/region": "eu-west-1",
        }
    )
    disabled: bool = False
    throttle: int = 0  # answer this many requests with 429 first
    fail_5xx: int = 0  # then this many with 503
    reject_tokens: bool = False  # every token is "expired"
    tokens: set[str] = field(default_factory=set)
    issued: int = 0
    # (method, path, token sent or None, ttl header or None, status answered)
    log: list[tuple[str, str, str | None, str | None, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expire_all(self) -> None:
        with self.lock:
            self.tokens.clear()

    def seq(self) -> list[tuple[str, str, int]]:
        return [(m, p, status) for m, p, _t, _ttl, status in self.log]

    def handle(self, method: str, path: str, token: str | None, ttl: str | None) -> tuple[int, bytes]:
        with self.lock:
            status, body = self._answer(method, path, token, ttl)
            self.log.append((method, path, token, ttl, status))
            return status, body

    def _answer(self, method: str, path: str, token: str | None, ttl: str | None) -> tuple[int, bytes]:
        if self.disabled:
            return 403, b""
        if self.throttle:
            self.throttle -= 1
            return 429, b""
        if self.fail_5xx:
            self.fail_5xx -= 1
            return 503, b""
        if method == "PUT":
            if path != "/latest/api/token":
                return 405, b""
            if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, b""
            self.issued += 1
            tok = f"tok-{self.issued}"
            self.tokens.add(tok)
            return 200, tok.encode()
        if token is None or token not in self.tokens or self.reject_tokens:
            return 401, b""  # IMDSv2 only: no token, no data
        if path == "/latest/user-data":
            return (404, b"") if self.user_data is None else (200, self.user_data)
        prefix = "/latest/meta-data/"
        if path.startswith(prefix) and path[len(prefix) :] in self.metadata:
            return 200, self.metadata[path[len(prefix) :]].encode()
        return 404, b""


@pytest.fixture
def imds() -> Iterator[tuple[FakeImds, str]]:
    fake = FakeImds()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            status, body = fake.handle(
                method, self.path, self.headers.get(TOKEN_HEADER), self.headers.get(TTL_HEADER)
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def client(endpoint: str, sleeps: list[float] | None = None, **kw: Any) -> ImdsClient:
    sink = sleeps if sleeps is not None else []
    return ImdsClient(endpoint, timeout=2.0, jitter=0.0, base=0.1, sleep=sink.append, **kw)


PUT = ("PUT", "/latest/api/token")
UD = ("GET", "/latest/user-data")


def test_user_data_with_token(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    assert client(endpoint).user_data() == b"#!talos\nmachine: {}\n"
    assert fake.seq() == [(*PUT, 200), (*UD, 200)]
    assert fake.log[0][3] == "21600"  # TTL header on the PUT
    assert fake.log[1][2] == "tok-1"  # token on the GET


def test_token_is_reused(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    c = client(endpoint, token_ttl=60)
    assert c.instance_id() == "i-0123456789abcdef0"
    assert c.region() == "eu-west-1"
    assert c.local_ipv4() == "10.0.0.12"
    assert c.hostname() == "ip-10-0-0-12.ec2.internal"
    assert c.get("public-keys/") is None
    assert [m for m, *_ in fake.log].count("PUT") == 1
    assert fake.log[0][3] == "60"
    assert {t for m, _p, t, _ttl, _s in fake.log if m == "GET"} == {"tok-1"}


def test_no_user_data_is_none_and_not_retried(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    fake.user_data = None
    sleeps: list[float] = []
    assert client(endpoint, sleeps).user_data() is None
    assert fake.seq() == [(*PUT, 200), (*UD, 404)]
    assert sleeps == []
    assert fetch_aws_config(client(endpoint)) is None


def test_expired_token_is_renewed_once(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    c = client(endpoint)
    assert c.user_data() is not None
    fake.expire_all()
    assert c.user_data() is not None
    assert fake.seq() == [(*PUT, 200), (*UD, 200), (*UD, 401), (*PUT, 200), (*UD, 200)]
    assert fake.log[-1][2] == "tok-2"


def test_persistent_401_is_an_error(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    fake.reject_tokens = True
    with pytest.raises(ImdsError, match="401 even with a fresh token"):
        client(endpoint).user_data()
    assert fake.seq() == [(*PUT, 200), (*UD, 401), (*PUT, 200), (*UD, 401)]


def test_disabled_is_clear_and_not_retried(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    fake.disabled = True
    sleeps: list[float] = []
    with pytest.raises(ImdsDisabledError, match="IMDS is disabled on this instance"):
        client(endpoint, sleeps).user_data()
    assert fake.seq() == [(*PUT, 403)]
    assert sleeps == []


def test_throttling_and_5xx_back_off(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    fake.throttle = 2
    fake.fail_5xx = 1
    sleeps: list[float] = []
    assert client(endpoint, sleeps).user_data() is not None
    # The PUT is throttled twice and fails once, then the GET goes through.
    assert fake.seq() == [(*PUT, 429), (*PUT, 429), (*PUT, 503), (*PUT, 200), (*UD, 200)]
    assert sleeps == [0.1, 0.2, 0.4]


def test_throttled_get_is_retried_with_same_token(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    c = client(endpoint)
    c.token()
    fake.throttle = 1
    assert c.user_data() is not None
    assert fake.seq() == [(*PUT, 200), (*UD, 429), (*UD, 200)]


def test_client_refreshes_token_before_expiry(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    now = [0.0]
    c = client(endpoint, token_ttl=100, clock=lambda: now[0])
    c.user_data()
    now[0] = 50.0
    c.user_data()
    now[0] = 95.0  # within the refresh margin (10 s for a 100 s token)
    c.user_data()
    assert fake.seq() == [(*PUT, 200), (*UD, 200), (*UD, 200), (*PUT, 200), (*UD, 200)]


def test_unreachable_gives_up_at_deadline() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    now = [0.0]
    sleeps: list[float] = []

    def sleep(d: float) -> None:
        sleeps.append(d)
        now[0] += d

    c = ImdsClient(
        f"http://127.0.0.1:{port}",
        deadline=3.0,
        base=0.5,
        cap=1.0,
        jitter=0.0,
        sleep=sleep,
        clock=lambda: now[0],
    )
    with pytest.raises(ImdsError, match="no IMDSv2 token before the deadline"):
        c.user_data()
    assert sleeps == [0.5, 1.0, 1.0, 0.5]


def test_oversized_response_refused(imds: tuple[FakeImds, str]) -> None:
    fake, endpoint = imds
    fake.user_data = b"x" * 5000
    with pytest.raises(ImdsError, match="larger than 4096 bytes"):
        client(endpoint, max_bytes=4096).user_data()
    ref = fetch_aws_config(client(endpoint))
    assert ref is not None and ref.data == b"x" * 5000


def test_parameters_are_validated() -> None:
    with pytest.raises(ValueError):
        ImdsClient("http://127.0.0.1:1", token_ttl=0)
    with pytest.raises(ValueError):
        ImdsClient("http://127.0.0.1:1", token_ttl=21601)
    with pytest.raises(ValueError):
        ImdsClient("https://127.0.0.1:1")
    with pytest.raises(ValueError):
        ImdsClient("http://127.0.0.1:1").fetch("latest/user-data")
