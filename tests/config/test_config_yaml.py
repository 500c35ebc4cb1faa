"""Reading YAML: malformed and hostile documents, positions of issues, and the wording of errors."""

import pickle
from typing import Any

import pytest
import yaml

from talos_os.config import ConfigError, ConfigIssue, loads


def _position_of(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column where ``needle`` first occurs in ``text``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(f"{needle!r} not in text")


def _one_issue(text: str | bytes) -> ConfigIssue:
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert len(info.value.issues) == 1, str(info.value)
    return info.value.issues[0]


# --- malformed documents -----------------------------------------------------------------------


def test_malformed_yaml_has_line_and_column() -> None:
    issue = _one_issue("version: v1\nmachine:\n  type: worker\n bad: x\n")
    assert (issue.line, issue.column) == (4, 2)
    assert issue.message.startswith("invalid YAML: did not find expected key")
    assert issue.path == ""


def test_unclosed_flow_sequence() -> None:
    issue = _one_issue("version: v1\nmachine: [1, 2\n")
    assert issue.line == 3
    assert "expected ',' or ']'" in issue.message


def test_tab_indentation() -> None:
    issue = _one_issue("version:\tv1\nmachine:\n\ttype: x\n")  # a tab after ':' is allowed
    assert (issue.line, issue.column) == (3, 1)
    assert "'\\t'" in issue.message


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n", "~\n", "null"])
def test_empty_document(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert str(info.value) == "config is empty: expected a YAML mapping with version, machine and cluster"


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n- b\n", "got a list of 2 items"),
        ("hello\n", "got 'hello'"),
        ("42", "integer 42"),
    ],
)
def test_top_level_must_be_a_mapping(text: str, got: str) -> None:
    issue = _one_issue(text)
    assert issue.message.startswith("expected a mapping at the top of the document")
    assert got in issue.message
    assert issue.line == 1


def test_multiple_documents() -> None:
    issue = _one_issue("version: v1\n---\nversion: v1\n")
    assert issue.message == "expected a single YAML document, found another one ('---')"
    assert issue.line == 2


def test_non_utf8_bytes() -> None:
    issue = _one_issue(b"version: v1\nmachine: \xff\n")
    assert issue.message == "config is not UTF-8 text: invalid byte 0xff"
    assert (issue.line, issue.column) == (2, 10)


def test_utf8_bom_is_accepted(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane)
    assert loads(b"\xef\xbb\xbf" + text.encode()) == loads(text)


def test_control_characters_rejected() -> None:
    issue = _one_issue("version: v1\x00\n")
    assert "U+0000 is not allowed" in issue.message
    assert (issue.line, issue.column) == (1, 12)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version: !!python/object:os.system x\n", "could not determine a constructor"),
        ("version: !custom x\n", "could not determine a constructor for the tag '!custom'"),
        ("version: *nowhere\n", "found undefined alias 'nowhere'"),
        ("version: v1\n<<: 5\n", "expected a mapping or list of mappings for merging"),
    ],
)
def test_unsafe_or_broken_constructs(text: str, fragment: str) -> None:
    issue = _one_issue(text)
    assert fragment in issue.message
    assert issue.line is not None


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    issue = _one_issue("\n".join(lines) + "\n")
    assert "too large" in issue.message
    assert "aliases are expanded" in issue.message


def test_recursive_alias() -> None:
    issue = _one_issue("a: &a [*a]\n")
    assert issue.message == "config contains an alias that refers to itself"


@pytest.mark.parametrize(
    "text", ["[" * 3000 + "]" * 3000, "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 100))]
)
def test_deep_nesting(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert "nested too deeply" in str(info.value)


def test_too_large() -> None:
    with pytest.raises(ConfigError, match="too large"):
        loads(b"#" * (9 * 1024 * 1024))


def test_aliases_and_merge_keys_work(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False)
    eth1 = "    - name: eth1\n      dhcp: true\n"
    assert eth1 in text
    anchored = (
        "    - &eth1\n      name: eth1\n      dhcp: true\n      mtu: 9000\n"
        "    - <<: *eth1\n      name: eth2\n"
    )
    config = loads(text.replace(eth1, anchored))
    assert config.machine.network is not None
    eth2 = config.machine.network.interfaces[2]
    assert (eth2.name, eth2.dhcp, eth2.mtu) == ("eth2", True, 9000)


def test_merged_values_are_validated(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False)
    eth1 = "    - name: eth1\n      dhcp: true\n"
    anchored = (
        "    - &eth1\n      name: eth1\n      dhcp: true\n    - <<: *eth1\n      name: eth2\n      mtu: 7\n"
    )
    issue = _one_issue(text.replace(eth1, anchored))
    assert issue.path == "machine.network.interfaces[2].mtu"
    assert issue.line == _position_of(text.replace(eth1, anchored), "mtu: 7")[0]


# --- keys --------------------------------------------------------------------------------------


def test_duplicate_key_names_the_path(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False)
    text = text.replace("    hostname: node-1\n", "    hostname: node-1\n    hostname: node-2\n")
    issue = _one_issue(text)
    assert issue.path == "machine.network.hostname"
    assert issue.message.startswith("duplicate key 'hostname' (first defined on line ")
    assert (issue.line, issue.column) == (_position_of(text, "hostname: node-2")[0], 5)


def test_duplicate_keys_reported_with_other_issues(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False).replace(
        "  name: demo\n", "  name: demo\n  name: Bad!\n"
    )
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert [i.path for i in info.value.issues] == ["cluster.name", "cluster.name"]
    assert "duplicate key 'name'" in info.value.issues[0].message
    assert "got 'Bad!'" in info.value.issues[1].message


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("on", "key 'on' which YAML reads as a boolean (quote it)"),
        ("8", "reads as an integer"),
        ("~", "as null"),
    ],
)
def test_keys_must_be_strings(controlplane: dict[str, Any], key: str, fragment: str) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False)
    text = text.replace("  env:\n", f"  env:\n    {key}: x\n")
    issue = _one_issue(text)
    assert issue.path == "machine.env"
    assert fragment in issue.message
    assert issue.line == _position_of(text, f"    {key}: x")[0]


def test_complex_key(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False).replace("  env:\n", "  env:\n    ? [a]\n    : x\n")
    issue = _one_issue(text)
    assert issue.message == "expected keys to be strings, got a list as a key"


# --- positions of validation issues ------------------------------------------------------------


def test_validation_issue_points_at_the_value(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False).replace("cidr: 10.5.0.3/24", "cidr: foo")
    issue = _one_issue(text)
    assert issue.path == "machine.network.interfaces[0].cidr"
    line, column = _position_of(text, "cidr: foo")
    assert (issue.line, issue.column) == (line, column + len("cidr: "))
    assert str(issue) == (
        f"machine.network.interfaces[0].cidr (line {line}, column {column + 6}): expected an IPv4 or IPv6 "
        "address with prefix length like 10.5.0.3/24, got 'foo'"
    )


def test_unknown_key_points_at_the_key(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False).replace(
        "    wipe: false\n", "    wipe: false\n    wype: 1\n"
    )
    issue = _one_issue(text)
    assert issue.path == "machine.install.wype"
    assert issue.message == "unknown key 'wype', did you mean 'wipe'?"
    assert (issue.line, issue.column) == _position_of(text, "wype")


def test_invalid_mapping_key_points_at_the_key(controlplane: dict[str, Any]) -> None:
    text = yaml.safe_dump(controlplane, sort_keys=False).replace("  env:\n", "  env:\n    9LIVES: x\n")
    issue = _one_issue(text)
    assert issue.path == 'machine.env["9LIVES"]'
    assert (issue.line, issue.column) == _position_of(text, "9LIVES")


def test_missing_key_points_at_its_mapping(controlplane: dict[str, Any]) -> None:
    del controlplane["machine"]["network"]["interfaces"][1]["name"]
    text = yaml.safe_dump(controlplane, sort_keys=False)
    issue = _one_issue(text)
    assert issue.path == "machine.network.interfaces[1].name"
    assert issue.message == "missing required key 'name'"
    assert issue.line == _position_of(text, "dhcp: true")[0]


def test_role_issue_has_position(worker: dict[str, Any], pki: Any) -> None:
    worker["cluster"]["serviceAccount"] = {"key": pki.service_account_key}
    text = yaml.safe_dump(worker, sort_keys=False)
    issue = _one_issue(text)
    assert issue.path == "cluster.serviceAccount"
    assert issue.line == _position_of(text, "serviceAccount:")[0] + 1


# --- every problem at once ---------------------------------------------------------------------


def test_three_independent_mistakes_give_three_issues(controlplane: dict[str, Any]) -> None:
    controlplane["machine"]["network"]["interfaces"][0]["mtu"] = 1
    controlplane["cluster"]["kubernetes"]["version"] = "latest"
    controlplane["machine"]["files"][0]["path"] = "/etc/motd"
    with pytest.raises(ConfigError) as info:
        loads(yaml.safe_dump(controlplane, sort_keys=False))
    paths = [i.path for i in info.value.issues]
    assert paths == [
        "machine.network.interfaces[0].mtu",
        "machine.files[0].path",
        "cluster.kubernetes.version",
    ]
    text = str(info.value)
    assert text.splitlines()[0] == "config is invalid (3 errors):"
    assert len(text.splitlines()) == 4


def test_field_role_and_cross_field_issues_together(worker: dict[str, Any], pki: Any) -> None:
    worker["machine"]["ca"]["key"] = pki.os_ca.key  # role rule
    worker["machine"]["network"]["interfaces"][1]["name"] = "eth0"  # cross-field rule
    worker["cluster"]["name"] = "UPPER"  # field rule
    worker["cluster"]["ca"]["key"] = pki.other_ca.key  # role rule and key mismatch
    with pytest.raises(ConfigError) as info:
        loads(yaml.safe_dump(worker, sort_keys=False))
    found = {(i.path, i.message.split(",")[0]) for i in info.value.issues}
    assert found == {
        ("machine.ca.key", "expected no OS CA private key on a worker node (only control planes carry it)"),
        ("machine.network.interfaces[1].name", "expected a unique interface name"),
        ("cluster.name", "expected a cluster name of lowercase letters"),
        ("cluster.ca.key", "expected the private key of the certificate in crt"),
        (
            "cluster.ca.key",
            "expected no Kubernetes CA private key on a worker node (only control planes carry it)",
        ),
    }


def test_issues_are_sorted_by_position(controlplane: dict[str, Any]) -> None:
    controlplane["cluster"]["name"] = "X"
    controlplane["debug"] = "no"
    controlplane["version"] = "v0"
    with pytest.raises(ConfigError) as info:
        loads(yaml.safe_dump(controlplane, sort_keys=False))
    lines = [i.line or 0 for i in info.value.issues]
    assert lines == sorted(lines)
    assert [i.path for i in info.value.issues] == ["version", "debug", "cluster.name"]


# --- the error types ---------------------------------------------------------------------------


def test_issue_formatting() -> None:
    assert (
        str(ConfigIssue("a.b[0]", "expected x, got y", 3, 7))
        == "a.b[0] (line 3, column 7): expected x, got y"
    )
    assert str(ConfigIssue("a", "m")) == "a: m"
    assert str(ConfigIssue("", "m", 2, 1)) == "line 2, column 1: m"
    assert str(ConfigIssue("", "m", 2)) == "line 2: m"
    assert str(ConfigIssue("", "just this")) == "just this"


def test_error_formatting() -> None:
    issues = [ConfigIssue("a", "one", 1, 1), ConfigIssue("b", "two")]
    assert str(ConfigError(issues)) == "config is invalid (2 errors):\n  a (line 1, column 1): one\n  b: two"
    assert str(ConfigError(issues[:1], source="/x.yaml")).startswith("config /x.yaml is invalid (1 error):")
    assert (
        str(ConfigError([ConfigIssue("", "cannot read config file x: gone")]))
        == "cannot read config file x: gone"
    )


def test_error_pickles() -> None:
    error = ConfigError([ConfigIssue("a", "b", 1, 2)], source="s")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.issues == error.issues
    assert copy.source == "s"
    assert str(copy) == str(error)
