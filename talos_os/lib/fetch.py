"""Fetching a machine config over HTTP(S), and where a config source found one (:class:`ConfigRef`).

At boot the network may not be up yet, DHCP may still be running and a config server may be
restarting: transient failures are retried with jittered exponential backoff (so a fleet of
nodes booting together does not hammer the server in lockstep), permanent ones (404, a config
that is too big) fail at once with a message that says what to fix. Standard library only:
this module ships inside the node image.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from talos_os.lib.retry import TransientError, retry

DEFAULT_MAX_BYTES = 1024 * 1024
CHUNK = 64 * 1024
# HTTP statuses worth retrying: the server or a proxy in front of it is busy or restarting.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(Exception):
    """A config could not be fetched and retrying will not help (or the retry budget is spent)."""


@dataclass(frozen=True)
class Progress:
    """What a fetch is doing, for a boot console line ("fetching config: 12 KiB", "retrying in 2 s")."""

    url: str
    phase: str  # "connecting" | "downloading" | "retrying" | "done"
    attempt: int
    received: int = 0
    total: int | None = None
    delay: float | None = None
    error: str | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ConfigRef:
    """Where a config source found the config: the bytes themselves, or a URL still to fetch."""

    source: str  # human-readable origin, e.g. "fw_cfg opt/talos/config" or "xenstore vm-data"
    data: bytes | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("ConfigRef needs exactly one of data= or url=")

    def resolve(self, fetch: Callable[[str], bytes] | None = None) -> bytes:
        """Return the config bytes, fetching the URL with ``fetch`` (default :func:`fetch_url`)."""
        if self.data is not None:
            return self.data
        assert self.url is not None
        return (fetch or fetch_url)(self.url)


def _redact(url: str) -> str:
    """Drop credentials from a URL before it appears in an error message or on the console."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """Move ``user:password@`` out of the URL (urllib cannot use it) into a Basic auth header."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return _redact(url), {"Authorization": f"Basic {token}"}


def build_opener(ssl_context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """An opener that ignores proxy environment variables: a node talks to its config server directly."""
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=ssl_context or ssl.create_default_context()),
    )


def _fetch_once(
    url: str,
    *,
    attempt: int,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str],
    opener: urllib.request.OpenerDirector,
    progress: ProgressCallback | None,
) -> bytes:
    shown = _redact(url)
    if progress:
        progress(Progress(shown, "connecting", attempt))
    target, auth = _split_credentials(url)
    req = urllib.request.Request(target, headers={**auth, **headers}, method="GET")
    try:
        with opener.open(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise FetchError(f"GET {shown}: config is {total} bytes, more than the limit of {max_bytes}")
            chunks: list[bytes] = []
            received = 0
            while True:
                chunk = resp.read(min(CHUNK, max_bytes + 1 - received))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
                if received > max_bytes:
                    raise FetchError(f"GET {shown}: config is larger than the limit of {max_bytes} bytes")
                if progress:
                    progress(Progress(shown, "downloading", attempt, received, total))
            if total is not None and received < total:
                raise TransientError(f"GET {shown}: connection closed after {received} of {total} bytes")
    except urllib.error.HTTPError as exc:
        what = f"GET {shown}: HTTP {exc.code} {exc.reason}"
        exc.close()
        if exc.code in TRANSIENT_HTTP:
            raise TransientError(what) from None
        if exc.code == 404:
            raise FetchError(f"{what}: no config at this URL (check talos.config=)") from None
        raise FetchError(what) from None
    except urllib.error.URLError as exc:
        # Connection refused, no route, DNS not up yet, TLS before the clock is set: all can
        # clear up while the node finishes booting, so they are retried until the budget ends.
        raise TransientError(f"GET {shown}: {exc.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise TransientError(f"GET {shown}: {type(exc).__name__}: {exc}") from None
    data = b"".join(chunks)
    if progress:
        progress(Progress(shown, "done", attempt, len(data), total))
    return data


def fetch_url(
    url: str,
    *,
    timeout: float = 10.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    attempts: int | None = None,
    deadline: float | None = 300.0,
    base: float = 1.0,
    cap: float = 30.0,
    jitter: float = 1.0,
    headers: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes:
    """GET ``url`` (http or https) and return the body, retrying transient failures.

    Raises :class:`FetchError` for a permanent failure or once the retry budget is spent.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"cannot fetch {_redact(url)!r}: only http:// and https:// URLs are supported")
    opener = build_opener(ssl_context)
    attempt_no = 0

    def once() -> bytes:
        nonlocal attempt_no
        attempt_no += 1
        return _fetch_once(
            url,
            attempt=attempt_no,
            timeout=timeout,
            max_bytes=max_bytes,
            headers=headers or {},
            opener=opener,
            progress=progress,
        )

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        if progress:
            progress(Progress(_redact(url), "retrying", attempt, delay=delay, error=str(exc)))

    try:
        return retry(
            once,
            attempts=attempts,
            deadline=deadline,
            base=base,
            cap=cap,
            jitter=jitter,
            on_retry=on_retry,
            sleep=sleep,
        )
    except TransientError as exc:
        raise FetchError(f"{exc} (gave up after {attempt_no} attempts)") from exc
