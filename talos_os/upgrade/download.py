"""Fetch an upgrade bundle from an http(s) URL into a file, streaming, with retries and backoff.

The config fetcher (:mod:`talos_os.lib.fetch`) keeps a body in memory; a bundle is hundreds of MiB,
so this one writes to disk as it goes and starts over on a transient failure (connection refused,
reset, 5xx, 429) until the deadline. A 404 or any other 4xx is permanent: one sentence, at once.
"""

from __future__ import annotations

import http.client
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from talos_os.lib.atomic import atomic_path
from talos_os.lib.fetch import TRANSIENT_HTTP, build_opener
from talos_os.lib.retry import TransientError, retry

CHUNK = 1 << 20
MAX_BYTES = 4 << 30


class DownloadError(Exception):
    """The bundle cannot be fetched; one sentence naming the URL and the fix."""


def shown(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(
            f"{shown(url)!r} is not an http:// or https:// URL the node can fetch the bundle from"
        )


def download(
    url: str,
    dest: Path,
    *,
    progress: Callable[[int, int | None], None] = lambda _done, _total: None,
    on_retry: Callable[[int, str, float], None] = lambda _attempt, _why, _delay: None,
    deadline: float = 300.0,
    timeout: float = 30.0,
    max_bytes: int = MAX_BYTES,
    ssl_context: ssl.SSLContext | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """GET ``url`` into ``dest`` (a temporary name, then renamed); returns the bytes written."""
    check_url(url)
    opener = build_opener(ssl_context)
    name = shown(url)

    def once(tmp: Path) -> int:
        try:
            with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if total is not None and total > max_bytes:
                    raise DownloadError(f"the bundle at {name} is {total} bytes, more than {max_bytes}")
                done = 0
                with open(tmp, "wb") as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        done += len(chunk)
                        if done > max_bytes:
                            raise DownloadError(f"the bundle at {name} is larger than {max_bytes} bytes")
                        progress(done, total)
                    f.flush()
                    os.fsync(f.fileno())
                if total is not None and done < total:
                    raise TransientError(f"GET {name}: the connection closed after {done} of {total} bytes")
                return done
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in TRANSIENT_HTTP:
                raise TransientError(f"GET {name}: HTTP {exc.code} {exc.reason}") from None
            raise DownloadError(
                f"the bundle URL {name} answered HTTP {exc.code} {exc.reason}: check --image"
            ) from None
        except urllib.error.URLError as exc:
            raise TransientError(f"GET {name}: {exc.reason}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise TransientError(f"GET {name}: {type(exc).__name__}: {exc}") from None

    try:
        with atomic_path(dest) as tmp:  # renamed once complete; removed on any failure
            return retry(
                lambda: once(tmp),
                deadline=deadline,
                base=1.0,
                cap=15.0,
                on_retry=lambda attempt, exc, delay: on_retry(attempt, str(exc), delay),
                sleep=sleep,
            )
    except TransientError as exc:
        raise DownloadError(f"the bundle could not be fetched within {deadline:.0f} s: {exc}") from None
