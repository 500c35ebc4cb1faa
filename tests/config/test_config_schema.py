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
