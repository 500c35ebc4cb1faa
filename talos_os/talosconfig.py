"""The client config ("talosconfig"): which nodes osctl talks to and the credentials it uses.

```yaml
context: demo
contexts:
  demo: {endpoints: ["10.5.0.2"], nodes: [], ca: <b64 PEM>, crt: <b64 PEM>, key: <b64 PEM>}
```

It holds a private key, so it is always saved atomically with mode 0600. Every error carries one
sentence an operator can act on; the CLI shows it as is.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from talos_os import pki

ENV_VAR = "TALOSCONFIG"
DEFAULT_PATH = Path("~/.talos/config")


class TalosConfigError(Exception):
    """The client config is missing, malformed or asked for something it does not have."""


@dataclass
class Context:
    """One named set of endpoints, target nodes and client credentials (all PEM as base64)."""

    endpoints: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    ca: str = ""
    crt: str = ""
    key: str = ""

    def ca_pem(self) -> bytes:
        """The OS CA certificate that node API certificates must chain to."""
        return self._pem("ca", self.ca)

    def crt_pem(self) -> bytes:
        """The client certificate presented to nodes."""
        return self._pem("crt", self.crt)

    def key_pem(self) -> bytes:
        """The client certificate's private key."""
        return self._pem("key", self.key)

    def _pem(self, name: str, value: str) -> bytes:
        if not value:
            raise TalosConfigError(f"the context has no {name}; regenerate it with `osctl config generate`")
        try:
            return pki.b64decode(value, what=name)
        except pki.PKIError as exc:
            raise TalosConfigError(f"the context's {name} is not valid base64 of PEM text ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoints": list(self.endpoints),
            "nodes": list(self.nodes),
            "ca": self.ca,
            "crt": self.crt,
            "key": self.key,
        }


@dataclass
class TalosConfig:
    """The whole file: the current context's name and every context by name."""

    context: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    def current(self) -> Context:
        """The context commands act on; an error says how to pick one when there is none."""
        if not self.context:
            raise TalosConfigError(f"no current context is set; {self._choose_hint()}")
        try:
            return self.contexts[self.context]
        except KeyError:
            raise TalosConfigError(
                f"the current context {self.context!r} does not exist; {self._choose_hint()}"
            ) from None

    def use_context(self, name: str) -> None:
        """Make ``name`` current, naming the available contexts when it does not exist."""
        if name not in self.contexts:
            raise TalosConfigError(f"context {name!r} does not exist; {self._available()}")
        self.context = name

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Replace the current context's endpoints (at least one is needed to reach the cluster)."""
        if not endpoints:
            raise TalosConfigError("give at least one endpoint")
        self.current().endpoints = _hosts(endpoints, "endpoint")

    def set_nodes(self, nodes: Sequence[str]) -> None:
        """Replace the current context's target nodes; an empty list means "the endpoint itself"."""
        self.current().nodes = _hosts(nodes, "node")

    def merge(self, other: TalosConfig) -> list[tuple[str, str]]:
        """Add ``other``'s contexts, renaming clashes ``name-1``, ``name-2``… like talosctl.

        A context identical to an existing one of the same name is not duplicated. The current
        context becomes ``other``'s current one (under its merged name). Returns the renames.
        """
        mapped: dict[str, str] = {}
        renames: list[tuple[str, str]] = []
        for name, ctx in other.contexts.items():
            merged = name
            existing = self.contexts.get(name)
            if existing is not None and existing != ctx:
                merged = _free_name(name, self.contexts)
                renames.append((name, merged))
            mapped[name] = merged
            self.contexts[merged] = copy.deepcopy(ctx)
        if other.context and other.context in mapped:
            self.context = mapped[other.context]
        return renames

    def to_dict(self) -> dict[str, Any]:
        return {"context": self.context, "contexts": {n: c.to_dict() for n, c in self.contexts.items()}}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=1 << 20)

    def _available(self) -> str:
        if not self.contexts:
            return "the config has no contexts (`osctl config generate` or `osctl config merge` adds one)"
        return f"available contexts: {', '.join(sorted(self.contexts))}"

    def _choose_hint(self) -> str:
        if not self.contexts:
            return self._available()
        return f"choose one with `osctl config context NAME` ({self._available()})"


def _free_name(name: str, taken: Mapping[str, object]) -> str:
    """The first of ``name-1``, ``name-2``… not in ``taken``."""
    i = 1
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


def _hosts(values: Sequence[str], what: str) -> list[str]:
    """Check each endpoint/node is a non-empty host without blanks; keep order, drop duplicates."""
    result: list[str] = []
    for value in values:
        host = value.strip()
        if not host or any(ch.isspace() for ch in host):
            raise TalosConfigError(f"{what} {value!r} is not a host name or IP address")
        if host not in result:
            result.append(host)
    return result


def _str_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TalosConfigError(f"{where} must be a list of strings")
    return list(value)


def _str(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TalosConfigError(f"{where} must be a string")
    return value


def _context_from(name: str, raw: object, source: str) -> Context:
    if not isinstance(raw, dict):
        raise TalosConfigError(f"{source}: context {name!r} must be a mapping")
    unknown = set(raw) - {"endpoints", "nodes", "ca", "crt", "key"}
    if unknown:
        raise TalosConfigError(
            f"{source}: context {name!r} has unknown field(s) {', '.join(sorted(map(str, unknown)))}"
        )
    where = f"{source}: contexts.{name}"
    return Context(
        endpoints=_str_list(raw.get("endpoints"), f"{where}.endpoints"),
        nodes=_str_list(raw.get("nodes"), f"{where}.nodes"),
        ca=_str(raw.get("ca"), f"{where}.ca"),
        crt=_str(raw.get("crt"), f"{where}.crt"),
        key=_str(raw.get("key"), f"{where}.key"),
    )


def loads(text: str | bytes, *, source: str = "talosconfig") -> TalosConfig:
    """Parse a talosconfig; ``source`` (usually the path) prefixes every error."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise TalosConfigError(f"{source} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return TalosConfig()
    if not isinstance(data, dict):
        raise TalosConfigError(f"{source} must be a YAML mapping with 'context' and 'contexts'")
    if {"machine", "cluster"} & set(data):  # reading it as a talosconfig, then saving, loses its secrets
        raise TalosConfigError(
            f"{source} is a machine config, not a talosconfig: use the talosconfig file that "
            "`osctl config generate` wrote next to it"
        )
    unknown = set(data) - {"context", "contexts"}
    if unknown:
        raise TalosConfigError(
            f"{source} has unknown top-level field(s) {', '.join(sorted(map(str, unknown)))}: "
            "it is not a talosconfig (which has only 'context' and 'contexts')"
        )
    contexts_raw = data.get("contexts") or {}
    if not isinstance(contexts_raw, dict):
        raise TalosConfigError(f"{source}: 'contexts' must be a mapping of name to context")
    context = data.get("context")
    if context is not None and not isinstance(context, str):
        raise TalosConfigError(f"{source}: 'context' must be a context name")
    contexts = {str(name): _context_from(str(name), raw, source) for name, raw in contexts_raw.items()}
    return TalosConfig(context=context or None, contexts=contexts)


def resolve_path(
    explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """Where the talosconfig lives: ``--talosconfig`` beats ``$TALOSCONFIG`` beats ``~/.talos/config``."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    return DEFAULT_PATH.expanduser()


def load(path: str | os.PathLike[str]) -> TalosConfig:
    """Read a talosconfig, explaining a missing file and how to create one."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise TalosConfigError(
            f"talosconfig {p} does not exist; `osctl config generate` creates one (then pass --talosconfig "
            f"or set {ENV_VAR})"
        ) from None
    except OSError as exc:
        raise TalosConfigError(f"cannot read talosconfig {p}: {exc.strerror or exc}") from None
    return loads(text, source=str(p))


def load_or_empty(path: str | os.PathLike[str]) -> TalosConfig:
    """Like ``load`` but a missing file is an empty config (for merge, which may create it)."""
    if not Path(path).exists():
        return TalosConfig()
    return load(path)


def save(config: TalosConfig, path: str | os.PathLike[str]) -> None:
    """Write atomically with mode 0600 (it holds a key); creates the parent directory as 0700."""
    p = Path(path)
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pki.write_secret(p, config.to_yaml().encode())
    except OSError as exc:
        raise TalosConfigError(f"cannot write talosconfig {p}: {exc.strerror or exc}") from None
