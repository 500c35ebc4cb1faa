"""The loader's bounds: values YAML cannot read are path-named issues, cost is bounded while parsing,
and no message quotes a secret (the cases a 100,000-input fuzz run found)."""

import base64
import time
import tracemalloc
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from talos_os.config import ConfigError, loads
from talos_os.config.loader import MAX_BYTES, MAX_NODES


def _issues(text: str | bytes) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert "internal error" not in str(info.value)
    return [str(issue) for issue in info.value.issues]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("!!bool maybe", "expected true or false"),
        ("!!int abc", "expected an integer YAML can read"),
        ("!!float abc", "expected a number YAML can read"),
        ("!!timestamp abc", "expected a real date or time"),
        ("2001-02-30", "expected a real date or time (quote it to make it a string)"),
        ("2001-13-01", "expected a real date or time"),
        ("9" * 5000, "expected an integer YAML can read"),
        ("!!set [1]", "invalid YAML: expected a mapping node"),
        ("!!omap [1]", "invalid YAML: expected a mapping of length 1"),
        ("!!binary 'a'", "invalid YAML: failed to decode base64 data"),
    ],
)
def test_values_yaml_cannot_read_name_their_path(
    controlplane: dict[str, Any], value: str, expected: str
) -> None:
    text = yaml.safe_dump(controlplane).replace("hostname: node-1\n", f"hostname: {value}\n")
    line = text.splitlines().index(f"    hostname: {value}") + 1
    (issue,) = _issues(text)
    assert issue.startswith(f"machine.network.hostname (line {line}, column 15): {expected}"), issue


def test_a_certificate_with_an_unknown_key_type(controlplane: dict[str, Any]) -> None:
    from cryptography import x509

    pem = base64.b64decode(controlplane["machine"]["ca"]["crt"])
    der = bytearray(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))
    oid = der.find(bytes.fromhex("06072a8648ce3d0201"))  # id-ecPublicKey
    assert oid > 0
    der[oid + 3] ^= 1  # one bit of the key type's OID
    body = base64.encodebytes(bytes(der)).decode()
    controlplane["machine"]["ca"]["crt"] = base64.b64encode(
        f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()
    ).decode()
    (issue,) = _issues(yaml.safe_dump(controlplane))
    assert issue.startswith("machine.ca.crt (line ") and "does not parse (Unknown key type" in issue


def _cost(text: str) -> tuple[float, int]:
    """CPU seconds (not wall time: a busy machine must not fail the bound) and peak bytes of one load."""
    tracemalloc.start()
    start = time.process_time()
    try:
        with pytest.raises(ConfigError) as info:
            loads(text)
    finally:
        elapsed = time.process_time() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert "too large" in str(info.value)
    return elapsed, peak


@pytest.mark.parametrize(
    "shape",
    [
        lambda n: "[" + "1," * n + "1]",  # a flow list without aliases (170 s and 2.5 GiB before)
        lambda n: "{" + "a: 1, " * n + "}",
        lambda n: "- 1\n" * n,
    ],
)
def test_size_limits_hold_while_parsing(shape: Any) -> None:
    text = shape(MAX_BYTES // 8)[: MAX_BYTES - 10]
    elapsed, peak = _cost(text)
    # Time measured under tracemalloc, which slows Python down: well under a second without it.
    assert elapsed < 2.0 and peak < 100 * 1024 * 1024, (elapsed, peak)
    assert f"more than {MAX_NODES} values" in _issues(text)[0]


def test_a_swallowed_section_does_not_put_its_secrets_in_the_message(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False).replace("machine:\n", "machine: |\n", 1)
    message = "\n".join(_issues(text))
    assert "machine (line" in message and "multi-line string" in message
    token = controlplane["machine"]["token"]
    assert token not in message and token.split(".")[1] not in message
    assert controlplane["machine"]["ca"]["key"][:20] not in message


def test_a_misplaced_token_is_not_quoted(controlplane: dict[str, Any]) -> None:
    controlplane["version"] = controlplane["machine"]["token"]  # a paste into the wrong key
    message = "\n".join(_issues(yaml.safe_dump(controlplane)))
    assert "version (line" in message and "<redacted>" in message
    assert controlplane["machine"]["token"] not in message


def test_a_syntax_error_names_the_path_it_broke() -> None:
    (issue,) = _issues("machine:\n  network:\n    interfaces: [a, b\n")
    assert issue == (
        "machine.network.interfaces (line 4, column 1): invalid YAML: did not find expected ',' or ']' "
        "(while parsing a flow sequence)"
    )
