"""The JSON Schema of the format: well-formed draft 2020-12, and it agrees with the loader on samples."""

import json
from typing import Any

import jsonschema
import pytest
import yaml

from talos_os.config import dump, json_schema, loads


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_header() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "talos-os machine config (v1)"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "machine", "cluster"}
    assert json.loads(json.dumps(schema)) == schema  # plain JSON data


def test_schema_uses_yaml_keys() -> None:
    text = json.dumps(json_schema())
    for key in (
        "certSANs",
        "dhcpTimeout",
        "frontProxyCA",
        "etcdCA",
        "aescbcEncryptionSecret",
        "extraKernelArgs",
    ):
        assert f'"{key}"' in text
    assert '"cert_sans"' not in text


@pytest.mark.parametrize("role", ["controlplane", "worker"])
def test_valid_configs_match_schema(
    validator: jsonschema.Draft202012Validator, request: pytest.FixtureRequest, role: str
) -> None:
    data: dict[str, Any] = request.getfixturevalue(role)
    validator.validate(data)
    validator.validate(yaml.safe_load(dump(loads(yaml.safe_dump(data)))))  # what dump() writes, too


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("machine", "certSans"), []),
        (("machine", "network", "interfaces", 0, "mtu"), "1500"),
        (("machine", "type"), "master"),
        (("version",), "v2"),
        (("cluster", "kubernetes", "images", "etcd"), 3),
        (("machine", "files", 0, "permissions"), "rw-r--r--"),
    ],
)
def test_schema_rejects_what_the_loader_rejects(
    validator: jsonschema.Draft202012Validator,
    controlplane: dict[str, Any],
    path: tuple[Any, ...],
    value: Any,
) -> None:
    node: Any = controlplane
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    assert not validator.is_valid(controlplane)


def _patterns(node: Any) -> list[str]:
    """Every ``pattern`` in a schema tree."""
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for item in node for p in _patterns(item)]
    return []


@pytest.mark.parametrize(
    ("module_attr", "samples"),
    [
        ("_K8S_VERSION_RE", ["v1.36.3", "v01.2.3", "v1.2", "v1.2.3-rc.1", "1.2.3", "v1.2.3-"]),
        ("_TOKEN_RE", ["abcdef.0123456789abcdef", "ABCDEF.0123456789abcdef", "abcdef0123456789abcdef"]),
        ("_CLUSTER_NAME_RE", ["prod", "-prod", "prod-", "pr-od", "Prod"]),
        ("_OCTAL_RE", ["0644", "0o600", "644", "0o8"]),
    ],
)
def test_schema_patterns_are_the_validators_expressions(module_attr: str, samples: list[str]) -> None:
    """The schema's pattern for a field accepts exactly what the loader's expression accepts."""
    import re

    from talos_os.config import types

    regex: re.Pattern[str] = getattr(types, module_attr)
    anchored = f"^(?:{regex.pattern})$"
    assert anchored in _patterns(json_schema())
    for sample in samples:
        assert (re.search(anchored, sample) is not None) == (regex.fullmatch(sample) is not None), sample
