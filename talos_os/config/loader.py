"""Reading and writing machine config YAML.

Parsing is defensive: the document is composed into YAML nodes first, so that aliases cannot blow up,
duplicate or non-string keys are caught with their position, and every validation problem can be
pointed at the line and column of the value it is about.

Its cost is bounded while it parses, not after: libyaml scans (fast, in C), and the composer counts
nodes and depth as it builds them, so an 8 MiB flow list stops at :data:`MAX_NODES` instead of
being built first. A value YAML itself cannot read (``!!int abc``, ``2001-02-30``) is an issue with
its path and position, and no message quotes a secret (:mod:`talos_os.redact`).
"""

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from types import GeneratorType
from typing import Any, cast

import yaml
from pydantic import ValidationError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from talos_os.config.errors import KEY_MARKER, ConfigError, ConfigIssue, describe, format_path
from talos_os.config.kinds import Mode
from talos_os.config.model import MachineConfig
from talos_os.redact import redact

#: Largest accepted document; configs are a few tens of KiB even with every certificate in them.
MAX_BYTES = 8 * 1024 * 1024
#: Most YAML nodes, counted while composing and again after expanding aliases ("billion laughs"):
#: a real config has a few hundred; this many cost well under a second to refuse.
MAX_NODES = 10_000
#: Deepest nesting of mappings and lists; the real format is about 8 levels deep.
MAX_DEPTH = 64
#: Most issues reported for one document; the rest are counted.
MAX_ISSUES = 50

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_NAMES = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}

_EMPTY = "config is empty: expected a YAML mapping with version, machine and cluster"

Path = tuple[int | str, ...]


try:  # libyaml scans and parses in C; the pure-Python parser is the fallback (slower, same results)
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - every supported PyYAML wheel has libyaml

    class _Parser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


_TAG_KINDS = {
    "tag:yaml.org,2002:bool": "true or false (it has an explicit !!bool tag)",
    "tag:yaml.org,2002:int": "an integer YAML can read (an explicit !!int, or more than 4300 digits)",
    "tag:yaml.org,2002:float": "a number YAML can read (it has an explicit !!float tag)",
    "tag:yaml.org,2002:timestamp": "a real date or time (quote it to make it a string)",
    "tag:yaml.org,2002:binary": "base64 data (it has an explicit !!binary tag)",
}


class _Loader(Composer, _Parser, SafeConstructor, Resolver):
    """libyaml's events, composed here (counting nodes and depth as they come), safely constructed.

    Non-string keys are left out of the data; they are reported as issues instead. A value that
    cannot be constructed raises :class:`_Reject` naming its path.
    """

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.node_count = 0
        self.depth = 0
        self.paths: dict[int, Path] = {}
        self.where: list[int | str] = []
        self.failed_at: Path | None = None

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.node_count += 1
        if self.node_count > MAX_NODES:
            raise _Reject(f"config is too large: more than {MAX_NODES} values", position=self._here())
        if self.depth >= MAX_DEPTH:
            raise _Reject(
                f"config is nested too deeply (more than {MAX_DEPTH} levels)", position=self._here()
            )
        # Where in the document this node is: a syntax error met inside names the path it broke.
        part = (
            index
            if isinstance(index, int)
            else str(index.value)
            if isinstance(index, yaml.ScalarNode)
            else None
        )
        if part is not None:
            self.where.append(part)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        except yaml.MarkedYAMLError:
            if self.failed_at is None:
                self.failed_at = tuple(self.where)
            raise
        finally:
            self.depth -= 1
            if part is not None:
                self.where.pop()

    def _here(self) -> tuple[int | None, int | None]:
        event = self.peek_event()
        return _position(event.start_mark if event is not None else None)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        pending = len(self.state_generators)
        try:
            data = super().construct_object(node, deep=deep)
        except _Reject:
            raise
        except Exception as exc:
            raise self._failure(node, exc) from None
        # Collections are filled in later by generators: their failures must name this node too.
        self.state_generators[pending:] = [
            cast("GeneratorType[Any, Any, Any]", self._guarded(g, node))
            for g in self.state_generators[pending:]
        ]
        return data

    def _guarded(self, generator: Generator[Any, None, None], node: yaml.Node) -> Generator[Any, None, None]:
        try:
            yield from generator
        except _Reject:
            raise
        except Exception as exc:
            raise self._failure(node, exc) from None

    def _failure(self, node: yaml.Node, exc: Exception) -> "_Reject":
        path = self.paths.get(id(node), ())
        if isinstance(exc, yaml.constructor.ConstructorError):
            return _Reject(f"invalid YAML: {exc.problem}", node, path=path)
        # The tag's constructor choked on the text: int('abc'), date(2001, 2, 30), a 5,000-digit number.
        return _Reject(f"expected {_TAG_KINDS.get(node.tag, f'a value of tag {node.tag}')}", node, path=path)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _STR_TAG:
                key = self.construct_object(key_node, deep=deep)
                mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings (file contents) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style: str | None = None
    if any(c in value for c in "\x85\u2028\u2029"):
        style = '"'  # PyYAML mangles these line separators in other styles; double quotes escape them
    elif "\n" in value:
        style = "|"
    return dumper.represent_scalar(_STR_TAG, value, style=style)


_Dumper.add_representer(str, _represent_str)


@dataclass
class _Marks:
    """Positions (1-based line, column) of the values and keys of the document, by path."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def find(self, path: Path, *, key: bool) -> tuple[int | None, int | None]:
        """Position of ``path`` (its key when ``key``), else of its nearest ancestor that exists."""
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (None, None))


class _Reject(Exception):
    """The document cannot even be read as YAML; carries the single issue explaining why."""

    def __init__(
        self,
        message: str,
        node: yaml.Node | None = None,
        position: tuple[int | None, int | None] = (None, None),
        path: Path = (),
    ) -> None:
        super().__init__(message)
        line, column = _position(node.start_mark) if node is not None else position
        self.issue = ConfigIssue(format_path(path), message, line, column)


def _position(mark: Any) -> tuple[int | None, int | None]:
    """1-based line and column of a mark (PyYAML's or libyaml's), or (None, None)."""
    return (None, None) if mark is None else (mark.line + 1, mark.column + 1)


# --- public API --------------------------------------------------------------------------------


def loads(data: str | bytes, *, mode: Mode | None = None) -> MachineConfig:
    """Parse and validate a machine config; raise ConfigError listing every problem found."""
    try:
        return _loads(data, mode)
    except ConfigError:
        raise
    except Exception as exc:  # pragma: no cover - a bug here must still not surface as a traceback
        message = f"internal error while reading the config: {type(exc).__name__}"
        raise ConfigError([ConfigIssue("", message)]) from exc


def load(path: str | os.PathLike[str], *, mode: Mode | None = None) -> MachineConfig:
    """Read, parse and validate a machine config file; raise ConfigError if unreadable or invalid."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue("", f"cannot read config file {name}: {reason}")], source=name
        ) from None
    try:
        return loads(data, mode=mode)
    except ConfigError as exc:
        raise ConfigError(exc.issues, source=name) from None


def dump(cfg: MachineConfig) -> str:
    """Write a config as YAML with camelCase keys, leaving out unset and empty (None) fields."""
    data = cfg.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    for entry in data.get("machine", {}).get("files", []):
        if isinstance(entry.get("permissions"), int):
            entry["permissions"] = f"0o{entry['permissions']:o}"  # the way people write modes
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)


# --- parsing -----------------------------------------------------------------------------------


def _loads(data: str | bytes, mode: Mode | None) -> MachineConfig:
    text = ""
    try:
        text = _decode(data)
        loader = _Loader(text)
        try:
            root = _compose(loader)
            _check_size(root)
            issues = list(_key_issues(root))
            loader.paths = _node_paths(root)
            raw = loader.construct_document(root)
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([_redacted(_yaml_issue(exc, text, loader.failed_at or ()), [])]) from None
        finally:
            loader.dispose()
    except _Reject as exc:
        raise ConfigError([_redacted(exc.issue, [])]) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_redacted(_yaml_issue(exc, text), [])]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([_reader_issue(exc, text)]) from None
    secrets = _secret_values(raw)

    if raw is None:
        raise ConfigError([ConfigIssue("", _EMPTY)])
    if not isinstance(raw, dict):
        line, column = _position(root.start_mark)
        issue = ConfigIssue(
            "", f"expected a mapping at the top of the document, got {describe(raw)}", line, column
        )
        raise ConfigError([issue])
    marks = _marks(root)
    try:
        config = MachineConfig.model_validate(raw, context={"mode": mode})
    except ValidationError as exc:
        issues.extend(_issues_from(exc, marks))
    if issues:
        raise ConfigError([_redacted(i, secrets) for i in _capped(_sorted_unique(issues))])
    return config


def _redacted(issue: ConfigIssue, secrets: list[str]) -> ConfigIssue:
    """The issue with no secret in its message (a block scalar can swallow a token into a value)."""
    message = redact(issue.message, secrets)
    return issue if message == issue.message else ConfigIssue(issue.path, message, issue.line, issue.column)


def _capped(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    if len(issues) <= MAX_ISSUES:
        return issues
    rest = len(issues) - MAX_ISSUES
    return [*issues[:MAX_ISSUES], ConfigIssue("", f"... and {rest} more problem{'' if rest == 1 else 's'}")]


_SECRET_KEYS = ("key", "token", "secret", "password")


def _secret_values(data: Any) -> list[str]:
    """Every string under a key that names a secret (``key``, ``token``, ``aescbcEncryptionSecret``...)."""
    found: list[str] = []
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        value, secret = stack.pop()
        if isinstance(value, dict):
            stack.extend(
                (v, secret or (isinstance(k, str) and any(n in k.lower() for n in _SECRET_KEYS)))
                for k, v in value.items()
            )
        elif isinstance(value, list):
            stack.extend((v, secret) for v in value)
        elif secret and isinstance(value, str):
            found.append(value)
    return found


def _node_paths(root: yaml.Node) -> dict[int, Path]:
    """The path of every node (the first one, for a node reached through aliases), before merges."""
    paths: dict[int, Path] = {}
    stack: list[tuple[yaml.Node, Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in paths:
            continue
        paths[id(node)] = path
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, index)) for index, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, path))
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                stack.append((value, (*path, name)))
    return paths


def _decode(data: str | bytes) -> str:
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_BYTES:
            raise _Reject(f"config is too large: more than {MAX_BYTES} bytes")
        try:
            return bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            message = f"config is not UTF-8 text: invalid byte 0x{data[exc.start]:02x}"
            raise _Reject(message, position=(line, column)) from None
    if not isinstance(data, str):
        raise _Reject(f"config must be text or bytes, got {type(data).__name__}")
    if len(data) > MAX_BYTES:
        raise _Reject(f"config is too large: more than {MAX_BYTES} characters")
    return data


def _compose(loader: _Loader) -> yaml.Node:
    try:
        root = loader.get_single_node()
    except yaml.composer.ComposerError as exc:
        if "single document" in f"{exc.problem} {exc.context}":
            line, column = _position(exc.problem_mark)
            raise ConfigError(
                [ConfigIssue("", "expected a single YAML document, found another one ('---')", line, column)]
            ) from None
        raise
    except RecursionError:
        raise _Reject(f"config is nested too deeply (more than {MAX_DEPTH} levels)") from None
    if root is None:
        raise _Reject(_EMPTY)
    return root


def _check_size(root: yaml.Node) -> None:
    """Reject documents that alias themselves, nest too deep, or grow too large once aliases expand."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _Reject(f"config is nested too deeply (more than {MAX_DEPTH} levels)", node)
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in active:
            raise _Reject("config contains an alias that refers to itself", node)
        active.add(ident)
        total = 1
        for child in _children(node):
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise _Reject(
                    f"config is too large: more than {MAX_NODES} values once aliases are expanded", node
                )
        active.discard(ident)
        sizes[ident] = total
        return total

    size(root, 0)


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value


def _key_issues(root: yaml.Node) -> Iterator[ConfigIssue]:
    """Duplicate keys and keys that are not strings (``on:``, ``1:``), each reported once."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, index)) for index, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                line, column = _position(key.start_mark)
                if key.tag == _MERGE_TAG:
                    stack.append((value, path))
                    continue
                if key.tag != _STR_TAG or not isinstance(key, yaml.ScalarNode):
                    yield ConfigIssue(format_path(path), _bad_key_message(key), line, column)
                    continue
                name = str(key.value)
                if name in first:
                    yield ConfigIssue(
                        format_path((*path, name)),
                        f"duplicate key {name!r} (first defined on line {first[name]})",
                        line,
                        column,
                    )
                else:
                    first[name] = line or 0
                stack.append((value, (*path, name)))


def _bad_key_message(key: yaml.Node) -> str:
    if isinstance(key, yaml.ScalarNode):
        kind = _TAG_NAMES.get(key.tag, f"a value tagged {key.tag}")
        return f"expected keys to be strings, got key {key.value!r} which YAML reads as {kind} (quote it)"
    kind = "a list" if isinstance(key, yaml.SequenceNode) else "a mapping"
    return f"expected keys to be strings, got {kind} as a key"


def _marks(root: yaml.Node) -> _Marks:
    """Positions by path, taken after construction so merged (<<) keys are included."""
    marks = _Marks()
    stack: list[tuple[yaml.Node, Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        line, column = _position(node.start_mark)
        if line is not None and column is not None:
            marks.values[path] = (line, column)
        if isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(item, (*path, index)) for index, item in enumerate(node.value)]))
        elif isinstance(node, yaml.MappingNode):
            children: list[tuple[yaml.Node, Path]] = []
            for key, value in node.value:
                if key.tag == _STR_TAG and isinstance(key, yaml.ScalarNode):
                    child = (*path, str(key.value))
                    key_line, key_column = _position(key.start_mark)
                    if key_line is not None and key_column is not None:
                        marks.keys[child] = (key_line, key_column)
                    children.append((value, child))
            # Pushed in reverse so entries are visited in order and a repeated key's last value wins,
            # as it does in the parsed data.
            stack.extend(reversed(children))
    return marks


def _issues_from(exc: ValidationError, marks: _Marks) -> Iterator[ConfigIssue]:
    for error in exc.errors():
        loc = tuple(error["loc"])
        about_key = bool(loc) and loc[-1] == KEY_MARKER
        if about_key:
            loc = loc[:-1]
        line, column = marks.find(loc, key=about_key or error.get("ctx", {}).get("kind") == "extra_forbidden")
        yield ConfigIssue(format_path(loc), str(error["msg"]), line, column)


def _sorted_unique(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (i.line is None, i.line or 0, i.column or 0))


def _yaml_issue(exc: yaml.MarkedYAMLError, text: str, path: Path = ()) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    line, column = _position(mark)
    problem = exc.problem or "invalid YAML"
    if "maximum nesting depth" in problem:  # libyaml's own limit, met while scanning ahead
        return ConfigIssue("", f"config is nested too deeply (more than {MAX_DEPTH} levels)", line, column)
    if "cannot start any token" in problem and _char_at(text, line, column) == "\t":
        message = "invalid YAML: found a tab '\\t' where YAML allows only spaces"
        return ConfigIssue(format_path(path), message, line, column)
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    return ConfigIssue(format_path(path), f"invalid YAML: {problem}{context}", line, column)


def _char_at(text: str, line: int | None, column: int | None) -> str:
    if line is None or column is None:
        return ""
    lines = text.split("\n", line)
    return lines[line - 1][column - 1 : column] if len(lines) >= line else ""


def _reader_issue(exc: yaml.YAMLError, text: str) -> ConfigIssue:
    position = getattr(exc, "position", None)
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        char = exc.character
        code = (
            char if isinstance(char, int) else ord(char) if isinstance(char, str) and len(char) == 1 else None
        )
        name = f"U+{code:04X}" if code is not None else repr(char)
        return ConfigIssue("", f"invalid YAML: character {name} is not allowed in YAML text", line, column)
    return ConfigIssue("", f"invalid YAML: {exc}")
