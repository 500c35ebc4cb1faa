"""Property tests: no input makes loads() fail with anything but ConfigError, and dump() round-trips.

Every failure is a list of issues, each with a position (or a whole-document problem), and no
message quotes a secret of the document. ``TALOS_FUZZ_EXAMPLES`` raises the number of examples per
test for a long run outside the suite (the suite keeps a few hundred).
"""

import copy
import os
import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talos_os.config import ConfigError, MachineConfig, dump, loads

EXAMPLES = int(os.environ.get("TALOS_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Issues that are about the whole document and so have no position.
WHOLE_DOCUMENT = ("config is empty", "config is too large: more than", "config must be text")
#: Every outcome, for the long run's report (``pytest -s`` prints it at the end of the module).
OUTCOMES: dict[str, int] = {}
SLOWEST = [0.0]  # the most CPU seconds one input cost

# Keys of the real format, so random documents reach deep into the model and not just its first level.
KEYS = [
    *("version", "debug", "machine", "cluster", "type", "token", "ca", "crt", "key", "identity", "certSANs"),
    *("trustd", "endpoints", "network", "hostname", "dhcpTimeout", "interfaces", "name", "dhcp", "cidr"),
    *("mtu", "routes", "gateway", "metric", "nameservers", "install", "disk", "wipe", "extraKernelArgs"),
    *("files", "path", "content", "permissions", "op", "env", "sysctls", "controlPlane", "endpoint"),
    *("dnsDomain", "podSubnets", "serviceSubnets", "aescbcEncryptionSecret", "serviceAccount"),
    *(
        "frontProxyCA",
        "etcdCA",
        "kubernetes",
        "images",
        "registryMirrors",
        "extraArgs",
        "kubelet",
        "apiServer",
    ),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.dates(),  # YAML timestamps
    st.binary(max_size=8),  # !!binary
    st.sampled_from(["v1", "worker", "init", "controlplane", "eth0", "10.5.0.3/24", "30s", "/dev/sda", "1"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=30,
)


def _timed(data: str | bytes) -> tuple[float, MachineConfig | ConfigError]:
    """CPU seconds loads(data) cost, and its outcome."""
    start = time.thread_time()
    try:
        outcome: MachineConfig | ConfigError = loads(data)
    except ConfigError as error:
        outcome = error
    return time.thread_time() - start, outcome


def _outcome(data: str | bytes, secrets: tuple[str, ...] = ()) -> None:
    """loads() returns a config or raises a ConfigError that is not a disguised crash, in under a second.

    Each issue has a position (unless it is about the whole document) and no message holds one
    of ``secrets``. A slow run is measured twice more and the least counts: a busy (virtual)
    machine or a garbage collection of the test's own objects can slow one run, and the bound is
    about what the input itself costs.
    """
    cost, result = _timed(data)
    if cost >= 1.0:
        cost = min(cost, _timed(data)[0], _timed(data)[0])
    SLOWEST[0] = max(SLOWEST[0], cost)
    assert cost < 1.0, "one input cost more than a second of CPU"
    if isinstance(result, MachineConfig):
        OUTCOMES["valid"] = OUTCOMES.get("valid", 0) + 1
        return
    text = str(result)
    assert result.issues
    assert "internal error" not in text, text
    for issue in result.issues:
        assert issue.message
        assert issue.line is None or issue.line >= 1
        assert issue.column is None or issue.column >= 1
        assert issue.line is not None or issue.message.startswith(WHOLE_DOCUMENT), issue
    for secret in secrets:
        assert secret not in text, f"a secret is quoted: {text}"
    first = result.issues[0]
    where = "position" if first.line is not None else "whole document"
    kind = f"error ({'path and ' if first.path else ''}{where})"
    OUTCOMES[kind] = OUTCOMES.get(kind, 0) + 1


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _outcome(data)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("abv1:-[]{}&*!|>'\"#%@`,?\n\t \\<~.0")), max_size=120))
def test_yaml_punctuation_soup(text: str) -> None:
    _outcome(text)


@FUZZ
@given(documents)
def test_arbitrary_yaml_documents(document: Any) -> None:
    _outcome(yaml.safe_dump(document))


@FUZZ
@given(st.dictionaries(st.sampled_from(["version", "debug", "machine", "cluster"]), documents, max_size=4))
def test_arbitrary_top_level_mappings(document: dict[str, Any]) -> None:
    _outcome(yaml.safe_dump(document))


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict):
        return [path] + [p for k, v in data.items() for p in _leaves(v, (*path, k))]
    if isinstance(data, list):
        return [path] + [p for i, v in enumerate(data) for p in _leaves(v, (*path, i))]
    return [path]


@FUZZ
@given(st.data())
def test_mutated_valid_config(controlplane_template: dict[str, Any], data: st.DataObject) -> None:
    config = copy.deepcopy(controlplane_template)
    if data.draw(st.booleans(), label="worker"):
        config["machine"]["type"] = "worker"
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        paths = [p for p in _leaves(config) if p]
        path = data.draw(st.sampled_from(paths), label="path")
        parent: Any = config
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(documents, label="value")
    _outcome(yaml.safe_dump(config), _secrets(controlplane_template))


def _secrets(template: dict[str, Any]) -> tuple[str, ...]:
    """The template's secret strings: tokens, keys, encryption secrets (and their first 16 characters)."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, secret or any(n in k.lower() for n in ("key", "token", "secret")))
        elif isinstance(value, list):
            for v in value:
                walk(v, secret)
        elif secret and isinstance(value, str) and len(value) >= 16:
            found.extend((value, value[-16:]))

    walk(template, False)
    return tuple(found)


@FUZZ
@given(st.data())
def test_damaged_valid_config_text(controlplane_template: dict[str, Any], data: st.DataObject) -> None:
    """Bit flips, cut lines and stray indentation in real config text: what a bad copy does."""
    text = bytearray(yaml.safe_dump(controlplane_template).encode())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="damages")):
        at = data.draw(st.integers(min_value=0, max_value=len(text) - 1), label="at")
        how = data.draw(st.sampled_from(["flip", "cut", "indent", "block"]), label="how")
        if how == "flip":
            text[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7), label="bit")
        elif how == "cut":
            del text[at : at + data.draw(st.integers(min_value=1, max_value=40), label="length")]
        elif how == "indent":
            text[at:at] = b"\n  "
        else:
            text[at:at] = b": |\n"
    _outcome(bytes(text), _secrets(controlplane_template))


@settings(max_examples=100, deadline=None)
@given(
    content=st.text(max_size=200),
    env=st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
        st.one_of(st.text(max_size=20), st.integers()),
    ),
)
def test_dump_round_trips(controlplane_template: dict[str, Any], content: str, env: dict[str, Any]) -> None:
    config = copy.deepcopy(controlplane_template)
    config["machine"]["files"][0]["content"] = content
    config["machine"]["env"] = env
    try:
        loaded = loads(yaml.safe_dump(config))
    except ConfigError as error:  # text YAML cannot carry (e.g. lone surrogates) is refused, not crashed on
        assert "internal error" not in str(error)
        return
    assert loads(dump(loaded)) == loaded


def teardown_module() -> None:
    if EXAMPLES > 250:
        print(f"\nfuzz outcomes: {OUTCOMES}, {sum(OUTCOMES.values())} inputs, slowest {SLOWEST[0]:.3f} s CPU")
