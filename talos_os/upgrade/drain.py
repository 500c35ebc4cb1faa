"""Cordon, drain and uncordon the node through the Kubernetes API, as ``kubectl drain`` does.

The credentials are the ones the node has: a control plane's ``/etc/kubernetes/admin.conf``, else
the kubelet's own ``/etc/kubernetes/kubelet.conf`` (a worker): with the Node authorizer and
NodeRestriction a kubelet may cordon its own node and evict the pods bound to it, and nothing else,
which is exactly what draining itself needs. Evictions go through the Eviction API, so PodDisruptionBudgets are honoured (a 429 is
retried until the deadline). Mirror pods (static pods: the control plane itself), DaemonSet pods
and finished pods are left alone, as ``kubectl drain --ignore-daemonsets`` leaves them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from talos_os.lib.retry import retry

ADMIN_KUBECONFIG = Path("/etc/kubernetes/admin.conf")
KUBELET_KUBECONFIG = Path("/etc/kubernetes/kubelet.conf")
MIRROR = "kubernetes.io/config.mirror"
RETRY_PAUSE = 5.0  # seconds between attempts when the API cannot be reached during a drain


class KubeError(Exception):
    """The API refused or could not be reached; one sentence."""


@dataclass(frozen=True)
class Api:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_pem: bytes = b""
    cert_pem: bytes = b""
    key_pem: bytes = b""
    timeout: float = 15.0

    @classmethod
    def from_kubeconfig(cls, path: Path = ADMIN_KUBECONFIG) -> Api:
        try:
            doc = yaml.safe_load(path.read_text())
            ctx_name = doc.get("current-context")
            ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
            cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
            user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
        except (OSError, yaml.YAMLError, KeyError, StopIteration, TypeError, AttributeError) as exc:
            raise KubeError(f"cannot read the kubeconfig {path}: {exc}") from None

        def data(entry: dict[str, Any], key: str) -> bytes:
            """Inline (``KEY-data``, as kubeadm writes admin.conf) or a file (``KEY``, as kubelet.conf
            names the kubelet's rotating client certificate), relative to the kubeconfig."""
            value = entry.get(f"{key}-data")
            if value:
                return base64.b64decode(value)
            if entry.get(key):
                try:
                    return (path.parent / str(entry[key])).read_bytes()
                except OSError as exc:
                    raise KubeError(f"cannot read {key} of the kubeconfig {path}: {exc}") from None
            return b""

        return cls(
            str(cluster["server"]),
            data(cluster, "certificate-authority"),
            data(user, "client-certificate"),
            data(user, "client-key"),
        )

    @classmethod
    def of_node(cls) -> tuple[Api, Path] | None:
        """The node's own credentials (admin.conf, else kubelet.conf) and which file; None without either."""
        for path in (ADMIN_KUBECONFIG, KUBELET_KUBECONFIG):
            if path.exists():
                return cls.from_kubeconfig(path), path
        return None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[http.client.HTTPConnection]:
        url = urllib.parse.urlsplit(self.server)
        host, port = url.hostname or "127.0.0.1", url.port
        if url.scheme == "http":
            conn: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=self.timeout)
            try:
                yield conn
            finally:
                conn.close()
            return
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode() if self.ca_pem else None)
        with tempfile.TemporaryDirectory(prefix="talos-kube-") as tmp:
            if self.cert_pem and self.key_pem:  # ssl loads a client certificate from files only
                cert, key = Path(tmp, "crt"), Path(tmp, "key")
                for path, pem in ((cert, self.cert_pem), (key, self.key_pem)):
                    path.touch(0o600)
                    path.write_bytes(pem)
                ctx.load_cert_chain(cert, key)
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=ctx)
            try:
                yield conn
            finally:
                conn.close()

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """One call; (status, decoded JSON body or None). Transport failures become KubeError."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        try:
            with self._connection() as conn:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise KubeError(f"the Kubernetes API at {self.server} cannot be reached: {exc}") from None
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, None


class Requests(Protocol):
    """What the drain needs of the API: one call at a time (:class:`Api`, or :class:`Patient`)."""

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]: ...


@dataclass
class Patient:
    """An :class:`Api` whose transport failures are tried again until ``deadline``: a control plane
    under load is no reason to skip the drain (an emulated one let a 15 s read time out, and the
    worker rebooted with its pods still on it)."""

    api: Requests
    deadline: float
    log: Callable[[str], None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        return retry(
            lambda: self.api.request(method, path, body, content_type),
            deadline=max(0.0, self.deadline - self.clock()),
            base=RETRY_PAUSE,
            cap=RETRY_PAUSE,
            jitter=0.0,
            retry_if=lambda exc: isinstance(exc, KubeError),
            on_retry=lambda _n, exc, _delay: self.log(f"drain: {exc}; retrying"),
            sleep=self.sleep,
            clock=self.clock,
        )


def set_unschedulable(api: Requests, node: str, value: bool) -> None:
    """Cordon (True) or uncordon (False) ``node``."""
    status, body = api.request(
        "PATCH",
        f"/api/v1/nodes/{urllib.parse.quote(node)}",
        {"spec": {"unschedulable": value or None}},
        "application/merge-patch+json",
    )
    if status != 200:
        what = "cordon" if value else "uncordon"
        raise KubeError(f"cannot {what} node {node}: the API answered {status} {_message(body)}")


def _message(body: Any) -> str:
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def evictable(pod: dict[str, Any]) -> str | None:
    """None when the pod must be evicted, else why it stays (as kubectl drain decides)."""
    meta = pod.get("metadata", {})
    if MIRROR in (meta.get("annotations") or {}):
        return "static pod"
    if any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or []):
        return "DaemonSet"
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return "finished"
    return None


@dataclass
class DrainReport:
    evicted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    remaining: list[str] = field(default_factory=list)


def pods_on(api: Requests, node: str) -> list[dict[str, Any]]:
    selector = urllib.parse.quote(f"spec.nodeName={node}")
    status, body = api.request("GET", f"/api/v1/pods?fieldSelector={selector}")
    if status != 200 or not isinstance(body, dict):
        raise KubeError(f"cannot list the pods on node {node}: the API answered {status} {_message(body)}")
    return list(body.get("items") or [])


def drain(
    api: Requests,
    node: str,
    *,
    timeout: float = 120.0,
    log: Callable[[str], None] = lambda _m: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> DrainReport:
    """Cordon ``node``, evict its pods, wait until they are gone (or ``timeout`` passes); an API
    that cannot be reached is tried again until then."""
    deadline = clock() + timeout
    calls = Patient(api, deadline, log, sleep, clock)
    set_unschedulable(calls, node, True)
    log(f"drain: node {node} cordoned")
    report = DrainReport()
    pending: dict[str, tuple[str, str, str]] = {}  # ns/name -> (ns, name, uid)
    for pod in pods_on(calls, node):
        meta = pod.get("metadata", {})
        ns, name = meta.get("namespace", "default"), meta.get("name", "")
        why = evictable(pod)
        if why is not None:
            report.skipped[f"{ns}/{name}"] = why
        else:
            pending[f"{ns}/{name}"] = (ns, name, meta.get("uid", ""))
    to_evict = dict(pending)
    while to_evict and clock() < deadline:
        for key, (ns, name, _uid) in list(to_evict.items()):
            eviction: dict[str, Any] = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns},
            }
            status, answer = calls.request(
                "POST",
                f"/api/v1/namespaces/{urllib.parse.quote(ns)}/pods/{urllib.parse.quote(name)}/eviction",
                eviction,
            )
            if status in (200, 201):
                report.evicted.append(key)
                del to_evict[key]
            elif status == 404:
                del to_evict[key]
                pending.pop(key, None)
            elif status == 429:
                log(
                    f"drain: {key} cannot be evicted yet ({_message(answer) or 'disruption budget'}); retrying"
                )
            else:
                raise KubeError(f"cannot evict pod {key}: the API answered {status} {_message(answer)}")
        if to_evict:
            sleep(2.0)
    while pending and clock() < deadline:
        for key, (ns, name, uid) in list(pending.items()):
            status, body = calls.request(
                "GET", f"/api/v1/namespaces/{urllib.parse.quote(ns)}/pods/{urllib.parse.quote(name)}"
            )
            if status == 404 or (isinstance(body, dict) and body.get("metadata", {}).get("uid") != uid):
                del pending[key]
        if pending:
            sleep(1.0)
    report.remaining = sorted(pending)
    log(
        f"drain: {len(report.evicted)} pods evicted, {len(report.skipped)} left in place"
        + (f", {len(report.remaining)} still terminating" if report.remaining else "")
    )
    return report


def uncordon(api: Api, node: str) -> None:
    set_unschedulable(api, node, False)
