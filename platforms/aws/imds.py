"""AWS guest half: an IMDSv2 client (session tokens only; never the IMDSv1 fallback).

A token comes from ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``;
every GET carries it in ``X-aws-ec2-metadata-token``. 401 means the token expired: get a new one
once. 403 means IMDS is disabled for the instance: say so and stop. 404 on user-data means the
instance has none. 429 (throttled), 5xx and connection errors are retried with jittered
exponential backoff until a deadline. The endpoint is a parameter: tests use a loopback server.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from talos_os.lib.fetch import ConfigRef
from talos_os.lib.retry import TransientError, retry

DEFAULT_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"
TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600
# AWS caps user data at 16 KB (before base64); reading is bounded a little above that.
DEFAULT_MAX_BYTES = 64 * 1024


class ImdsError(Exception):
    """The instance metadata service could not answer."""


class ImdsDisabledError(ImdsError):
    """IMDS answered 403: the instance was launched with the metadata endpoint disabled."""


class _Unauthorized(Exception):
    """401 on a GET: the token is missing or expired (handled inside the client)."""


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes


class ImdsClient:
    """A small IMDSv2 client: ``user_data()`` and ``get(meta-data path)``."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        token_ttl: int = MAX_TTL,
        timeout: float = 2.0,
        deadline: float = 60.0,
        base: float = 0.2,
        cap: float = 5.0,
        jitter: float = 1.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> None:
        if not 1 <= token_ttl <= MAX_TTL:
            raise ValueError(f"token_ttl must be between 1 and {MAX_TTL} seconds")
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"IMDS endpoint must be an http:// URL, not {endpoint!r}")
        self.endpoint = endpoint
        self._host = parts.hostname
        self._port = parts.port or 80
        self.token_ttl = token_ttl
        self.timeout = timeout
        self.deadline = deadline
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.max_bytes = max_bytes
        self._sleep = sleep
        self._clock = clock
        self._on_retry = on_retry
        self._token: str | None = None
        self._token_expires = 0.0

    # --- transport -----------------------------------------------------------------------------

    def _request_once(self, method: str, path: str, headers: dict[str, str]) -> _Response:
        """One HTTP exchange; connection trouble and throttling become :class:`TransientError`."""
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read(self.max_bytes + 1)
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"IMDS {method} {path}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if status == 429 or status >= 500:
            raise TransientError(f"IMDS {method} {path}: HTTP {status}")
        if status == 403:
            raise ImdsDisabledError(
                "IMDS is disabled on this instance (HTTP 403): enable the metadata endpoint "
                "(aws ec2 modify-instance-metadata-options --http-endpoint enabled)"
            )
        if len(body) > self.max_bytes:
            raise ImdsError(f"IMDS {method} {path}: response larger than {self.max_bytes} bytes")
        return _Response(status, body)

    def _request(self, method: str, path: str, headers: dict[str, str]) -> _Response:
        return retry(
            lambda: self._request_once(method, path, headers),
            deadline=self.deadline,
            base=self.base,
            cap=self.cap,
            jitter=self.jitter,
            on_retry=self._on_retry,
            sleep=self._sleep,
            clock=self._clock,
        )

    # --- tokens --------------------------------------------------------------------------------

    def token(self) -> str:
        """A valid session token, fetched again shortly before the previous one expires."""
        if self._token is not None and self._clock() < self._token_expires:
            return self._token
        try:
            resp = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl)})
        except TransientError as exc:
            raise ImdsError(f"no IMDSv2 token before the deadline: {exc}") from exc
        if resp.status != 200 or not resp.body:
            raise ImdsError(f"IMDS token request failed: HTTP {resp.status}")
        self._token = resp.body.decode("ascii", "replace").strip()
        # Refresh a little early so a token never expires between our check and the server's.
        self._token_expires = self._clock() + self.token_ttl - min(60.0, self.token_ttl / 10)
        return self._token

    def invalidate_token(self) -> None:
        """Forget the cached token (the next request fetches a new one)."""
        self._token = None

    # --- reads ---------------------------------------------------------------------------------

    def _get_once(self, path: str) -> bytes | None:
        resp = self._request("GET", path, {TOKEN_HEADER: self.token()})
        if resp.status == 401:
            raise _Unauthorized(path)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise ImdsError(f"IMDS GET {path}: HTTP {resp.status}")
        return resp.body

    def fetch(self, path: str) -> bytes | None:
        """GET ``path`` (absolute, e.g. ``/latest/user-data``); None on 404."""
        if not path.startswith("/"):
            raise ValueError(f"IMDS path must be absolute: {path!r}")
        try:
            try:
                return self._get_once(path)
            except _Unauthorized:
                self.invalidate_token()
                try:
                    return self._get_once(path)
                except _Unauthorized:
                    raise ImdsError(f"IMDS GET {path}: HTTP 401 even with a fresh token") from None
        except TransientError as exc:
            raise ImdsError(f"IMDS did not answer before the deadline: {exc}") from exc

    def user_data(self) -> bytes | None:
        """The instance's user data, or None if it has none."""
        return self.fetch("/latest/user-data")

    def get(self, path: str) -> str | None:
        """A meta-data value (``instance-id``, ``local-ipv4``, ``placement/region``...); None on 404."""
        data = self.fetch("/latest/meta-data/" + path.lstrip("/"))
        return None if data is None else data.decode("utf-8", "replace").strip()

    def instance_id(self) -> str | None:
        return self.get("instance-id")

    def region(self) -> str | None:
        return self.get("placement/region")

    def local_ipv4(self) -> str | None:
        return self.get("local-ipv4")

    def hostname(self) -> str | None:
        return self.get("local-hostname") or self.get("hostname")


def fetch_aws_config(client: ImdsClient) -> ConfigRef | None:
    """The machine config from user data, or None when the instance was launched without any."""
    data = client.user_data()
    if data is None or not data.strip():
        return None
    return ConfigRef(source="AWS IMDSv2 user-data", data=data)
