"""Config generation and ``osctl config ...``, through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from talos_os import pki, talosconfig
from talos_os.config import Mode, loads
from talos_os.config import generate as generate_mod
from talos_os.config.generate import GeneratedConfigs, GenerateError, Secrets, generate
from talos_os.osctl.cli import cli

ENDPOINT = "https://10.5.0.2:6443"
FILES = ("init.yaml", "controlplane.yaml", "worker.yaml", "talosconfig")
TOKEN_RE = r"^[a-z0-9]{6}\.[a-z0-9]{16}$"


@pytest.fixture(scope="module")
def secrets() -> Secrets:
    """One set of cluster secrets for the whole module (RSA key generation is slow-ish)."""
    return generate_mod.new_secrets("demo")


@pytest.fixture(scope="module")
def generated(secrets: Secrets) -> GeneratedConfigs:
    return generate("demo", ENDPOINT, additional_sans=["demo.example.com", "10.5.0.100"], secrets=secrets)


@pytest.fixture
def fast_secrets(secrets: Secrets, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make CLI generation reuse the module's secrets instead of minting new keys each time."""
    monkeypatch.setattr(generate_mod, "new_secrets", lambda _name: secrets)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated HOME with no $TALOSCONFIG, so tests never touch the real ~/.talos."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TALOSCONFIG", raising=False)
    yield tmp_path / "home"


def _doc(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _osctl() -> str:
    found = shutil.which("osctl") or str(Path(sys.executable).parent / "osctl")
    assert Path(found).exists(), "osctl is not installed (pip install -e .)"
    return found


def _subprocess(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TALOSCONFIG"} | {"HOME": str(home)}
    return subprocess.run(
        [_osctl(), *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )


# ---- generate() --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["init", "controlplane", "worker"])
def test_generated_configs_pass_the_loader(generated: GeneratedConfigs, name: str) -> None:
    text = getattr(generated, name)
    for mode in (None, *Mode):
        config = loads(text, mode=mode)
        assert config.machine.type == name


def test_configs_share_one_set_of_secrets(generated: GeneratedConfigs) -> None:
    init, cp, worker = (_doc(t) for t in (generated.init, generated.controlplane, generated.worker))
    for doc in (cp, worker):
        assert doc["machine"]["ca"]["crt"] == init["machine"]["ca"]["crt"]
        assert doc["cluster"]["ca"]["crt"] == init["cluster"]["ca"]["crt"]
        assert doc["machine"]["token"] == init["machine"]["token"]
        assert doc["cluster"]["token"] == init["cluster"]["token"]
    for key in ("ca", "serviceAccount", "frontProxyCA", "etcdCA", "aescbcEncryptionSecret"):
        assert cp["cluster"][key] == init["cluster"][key]
    assert init["machine"]["token"] != init["cluster"]["token"]
    for token in (init["machine"]["token"], init["cluster"]["token"]):
        assert re.match(TOKEN_RE, token)
    assert len(pki.b64decode(init["cluster"]["aescbcEncryptionSecret"])) == 32


def test_worker_gets_no_keys(generated: GeneratedConfigs) -> None:
    worker = _doc(generated.worker)
    assert worker["machine"]["type"] == "worker"
    assert set(worker["machine"]["ca"]) == {"crt"}
    assert set(worker["cluster"]["ca"]) == {"crt"}
    for key in ("serviceAccount", "frontProxyCA", "etcdCA", "aescbcEncryptionSecret"):
        assert key not in worker["cluster"]
    assert "PRIVATE KEY" not in generated.worker
    assert b"PRIVATE KEY" not in b"".join(pki.b64decode(v) for v in _b64_values(worker))


def _b64_values(node: Any) -> Iterator[str]:
    """Every string that looks like base64 PEM in a document."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _b64_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from _b64_values(value)
    elif isinstance(node, str) and node.startswith("LS0t"):
        yield node


def test_control_plane_keys_match_their_certificates(generated: GeneratedConfigs) -> None:
    cluster = _doc(generated.init)["cluster"]
    for field in ("ca", "frontProxyCA", "etcdCA"):
        pair = pki.CertKey.from_b64(cluster[field]["crt"], cluster[field]["key"])
        assert pair.cert.public_key() == pair.key.public_key()
    machine_ca = _doc(generated.init)["machine"]["ca"]
    os_ca = pki.CertKey.from_b64(machine_ca["crt"], machine_ca["key"])
    assert os_ca.cert.public_key() == os_ca.key.public_key()


def test_sans_endpoint_and_defaults(generated: GeneratedConfigs) -> None:
    init = _doc(generated.init)
    assert init["machine"]["certSANs"] == ["10.5.0.2", "demo.example.com", "10.5.0.100"]
    assert init["cluster"]["kubernetes"] == {
        "version": "v1.36.3",
        "certSANs": ["10.5.0.2", "demo.example.com", "10.5.0.100"],
    }
    assert init["cluster"]["controlPlane"]["endpoint"] == ENDPOINT
    assert init["machine"]["trustd"]["endpoints"] == ["https://10.5.0.2:50001"]
    assert init["machine"]["install"]["disk"] == "/dev/sda"
    assert init["cluster"]["name"] == "demo"


def test_talosconfig_holds_an_admin_certificate_from_the_os_ca(generated: GeneratedConfigs) -> None:
    cfg = talosconfig.loads(generated.talosconfig)
    assert cfg.context == "demo"
    ctx = cfg.current()
    assert ctx.endpoints == ["10.5.0.2"] and ctx.nodes == []
    assert ctx.ca_pem() == generated.secrets.os_ca.cert_pem
    admin = pki.load_certificate(ctx.crt_pem())
    pki.verify_issued_by(admin, generated.secrets.os_ca.cert)
    assert pki.roles_of(admin) == {pki.ROLE_ADMIN}
    assert admin.public_key() == pki.load_private_key(ctx.key_pem()).public_key()


def test_ipv6_and_dns_endpoints(secrets: Secrets) -> None:
    v6 = generate("demo", "https://[fd00::2]:6443/", secrets=secrets)
    init = _doc(v6.init)
    assert init["cluster"]["controlPlane"]["endpoint"] == "https://[fd00::2]:6443"
    assert init["machine"]["trustd"]["endpoints"] == ["https://[fd00::2]:50001"]
    assert talosconfig.loads(v6.talosconfig).current().endpoints == ["fd00::2"]
    loads(v6.init)
    dns = generate("demo", "https://k8s.example.com:443", secrets=secrets)
    assert talosconfig.loads(dns.talosconfig).current().endpoints == ["k8s.example.com"]


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://10.5.0.2:6443", "must use https"),
        ("https://10.5.0.2", "has no port"),
        ("https://10.5.0.2:99999", "is invalid"),
        ("10.5.0.2:6443", "must use https"),
        ("https://:6443", "no valid host"),
        ("https://bad_host!:6443", "no valid host"),
        ("https://10.5.0.2:6443/api", "just scheme, host and port"),
    ],
)
def test_bad_endpoints_are_refused(secrets: Secrets, endpoint: str, message: str) -> None:
    with pytest.raises(GenerateError, match=message):
        generate("demo", endpoint, secrets=secrets)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"additional_sans": ["ok.example.com", "not a name"]}, "additional SAN 'not a name'"),
        ({"additional_sans": ["-bad.example.com"]}, "neither an IP address nor a DNS name"),
        ({"kubernetes_version": "1.30"}, "Kubernetes version"),
        ({"install_disk": "sda"}, "install disk"),
    ],
)
def test_bad_options_are_refused(secrets: Secrets, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(GenerateError, match=message):
        generate("demo", ENDPOINT, secrets=secrets, **kwargs)


@pytest.mark.parametrize("name", ["Demo", "-demo", "de mo", "", "a" * 64])
def test_bad_cluster_names_are_refused(secrets: Secrets, name: str) -> None:
    with pytest.raises(GenerateError, match="cluster name"):
        generate(name, ENDPOINT, secrets=secrets)


def test_wildcard_san_is_accepted(secrets: Secrets) -> None:
    out = generate("demo", ENDPOINT, additional_sans=["*.example.com"], secrets=secrets)
    assert "*.example.com" in _doc(out.init)["machine"]["certSANs"]


def test_fresh_secrets_differ_between_clusters() -> None:
    assert generate_mod.new_token() != generate_mod.new_token()


# ---- osctl config generate ---------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("fast_secrets", "home")
def test_cli_generate_writes_four_private_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(
        "config", "generate", "demo", ENDPOINT, "-o", str(out), "--additional-sans", "a.example,10.0.0.9"
    )
    assert result.exit_code == 0, result.output
    for name in FILES:
        assert (out / name).is_file()
        assert _mode(out / name) == 0o600
        assert str(out / name) in result.output
    init = _doc((out / "init.yaml").read_text())
    assert init["machine"]["certSANs"] == ["10.5.0.2", "a.example", "10.0.0.9"]


@pytest.mark.usefixtures("fast_secrets", "home")
def test_cli_generate_takes_repeated_sans_and_options(tmp_path: Path) -> None:
    result = _run(
        "config",
        "generate",
        "demo",
        ENDPOINT,
        "-o",
        str(tmp_path),
        "--additional-sans",
        "a.example",
        "--additional-sans",
        "b.example",
        "--kubernetes-version",
        "v1.29.1",
        "--install-disk",
        "/dev/vda",
    )
    assert result.exit_code == 0, result.output
    worker = _doc((tmp_path / "worker.yaml").read_text())
    assert worker["cluster"]["kubernetes"]["version"] == "v1.29.1"
    assert worker["cluster"]["kubernetes"]["certSANs"] == ["10.5.0.2", "a.example", "b.example"]
    assert worker["machine"]["install"]["disk"] == "/dev/vda"


@pytest.mark.usefixtures("fast_secrets", "home")
def test_cli_generate_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    (tmp_path / "worker.yaml").write_text("keep me")
    result = _run("config", "generate", "demo", ENDPOINT, "-o", str(tmp_path))
    assert result.exit_code == 1
    assert f"{tmp_path / 'worker.yaml'} already exists; pass --force to overwrite it" in result.output
    assert (tmp_path / "worker.yaml").read_text() == "keep me"
    assert not (tmp_path / "init.yaml").exists()
    forced = _run("config", "generate", "demo", ENDPOINT, "-o", str(tmp_path), "--force")
    assert forced.exit_code == 0, forced.output
    loads((tmp_path / "worker.yaml").read_text())


@pytest.mark.usefixtures("fast_secrets", "home")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "http://10.5.0.2:6443"], "must use https"),
        (["demo", ENDPOINT, "--additional-sans", "bad name"], "additional SAN 'bad name'"),
        (["Bad", ENDPOINT], "cluster name 'Bad' is invalid"),
    ],
)
def test_cli_generate_errors_are_one_sentence(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run("config", "generate", *args, "-o", str(tmp_path))
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# ---- osctl config validate / schema ------------------------------------------------------------------------


def test_cli_validate_accepts_generated_configs(generated: GeneratedConfigs, tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(generated.worker)
    result = _run("config", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert f"{path} is valid" in result.output
    result = _run("config", "validate", str(path), "--mode", "metal")
    assert result.exit_code == 0, result.output
    assert f"{path} is valid for mode metal" in result.output


def _three_mistakes(worker_yaml: str) -> tuple[str, list[str]]:
    """A worker config with three independent mistakes, and the paths each issue must name."""
    doc = _doc(worker_yaml)
    doc["machine"]["token"] = "not-a-token"
    doc["cluster"]["controlPlane"]["endpoint"] = "ftp://nowhere"
    doc["cluster"]["network"]["podSubnets"] = ["10.244.0.0/99"]
    return yaml.safe_dump(doc), [
        "machine.token",
        "cluster.controlPlane.endpoint",
        "cluster.network.podSubnets",
    ]


def test_cli_validate_prints_each_issue_on_its_own_line(generated: GeneratedConfigs, tmp_path: Path) -> None:
    text, paths = _three_mistakes(generated.worker)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _run("config", "validate", str(path))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    for field_path in paths:
        assert sum(field_path in line for line in lines) == 1, (field_path, result.output)
    assert "Traceback" not in result.output


def test_cli_validate_unreadable_file(tmp_path: Path) -> None:
    result = _run("config", "validate", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1
    assert f"cannot read {tmp_path / 'missing.yaml'}: No such file or directory" in result.output
    result = _run("config", "validate", str(tmp_path))
    assert result.exit_code == 1 and "Is a directory" in result.output


def test_cli_validate_rejects_an_unknown_mode(generated: GeneratedConfigs, tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(generated.worker)
    result = CliRunner().invoke(cli, ["config", "validate", str(path), "--mode", "moon"])
    assert result.exit_code == 2 and "moon" in result.output


def test_cli_schema_prints_json() -> None:
    result = _run("config", "schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert isinstance(schema, dict) and schema


# ---- talosconfig commands ----------------------------------------------------------------------------------


@pytest.fixture
def talosconfig_file(generated: GeneratedConfigs, tmp_path: Path) -> Path:
    path = tmp_path / "talosconfig"
    path.write_text(generated.talosconfig)
    path.chmod(0o600)
    return path


@pytest.mark.usefixtures("home")
def test_cli_contexts_table(talosconfig_file: Path) -> None:
    result = _run("config", "--talosconfig", str(talosconfig_file), "contexts")
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["CURRENT", "NAME", "ENDPOINTS", "NODES"]
    assert row.split() == ["*", "demo", "10.5.0.2"]


@pytest.mark.usefixtures("home")
def test_cli_endpoint_node_and_context(talosconfig_file: Path, generated: GeneratedConfigs) -> None:
    tc = ["config", "--talosconfig", str(talosconfig_file)]
    assert _run(*tc, "endpoint", "10.5.0.2", "10.5.0.3").exit_code == 0
    assert _run(*tc, "node", "10.5.0.4").exit_code == 0
    cfg = talosconfig.load(talosconfig_file)
    assert cfg.current().endpoints == ["10.5.0.2", "10.5.0.3"]
    assert cfg.current().nodes == ["10.5.0.4"]
    assert _mode(talosconfig_file) == 0o600
    table = _run(*tc, "contexts").output.splitlines()[1].split()
    assert table == ["*", "demo", "10.5.0.2,10.5.0.3", "10.5.0.4"]

    missing = _run(*tc, "context", "prod")
    assert missing.exit_code == 1
    assert "context 'prod' does not exist; available contexts: demo" in missing.output
    assert _run(*tc, "endpoint").exit_code == 2  # at least one HOST is required


@pytest.mark.usefixtures("home")
def test_cli_merge_then_switch_context(
    talosconfig_file: Path, generated: GeneratedConfigs, tmp_path: Path
) -> None:
    target = tmp_path / "merged" / "config"
    tc = ["config", "--talosconfig", str(target)]
    first = _run(*tc, "merge", str(talosconfig_file))
    assert first.exit_code == 0, first.output
    other = talosconfig.loads(generated.talosconfig)
    other.current().endpoints = ["10.9.9.9"]
    other_path = tmp_path / "other"
    talosconfig.save(other, other_path)
    second = _run(*tc, "merge", str(other_path))
    assert second.exit_code == 0, second.output
    assert "renamed context demo to demo-1" in second.output
    cfg = talosconfig.load(target)
    assert cfg.context == "demo-1" and sorted(cfg.contexts) == ["demo", "demo-1"]
    assert _run(*tc, "context", "demo").exit_code == 0
    assert talosconfig.load(target).context == "demo"
    assert _mode(target) == 0o600


def test_cli_talosconfig_resolution_order(talosconfig_file: Path, home: Path, tmp_path: Path) -> None:
    # Default: ~/.talos/config, which does not exist yet.
    result = _run("config", "contexts")
    assert result.exit_code == 1
    assert str(home / ".talos" / "config") in result.output and "osctl config generate" in result.output
    # $TALOSCONFIG.
    result = _run("config", "contexts", env={"TALOSCONFIG": str(talosconfig_file)})
    assert result.exit_code == 0 and "demo" in result.output
    # The root group's --talosconfig beats $TALOSCONFIG; config's own option beats the root's.
    elsewhere = {"TALOSCONFIG": str(tmp_path / "nope")}
    result = _run("--talosconfig", str(talosconfig_file), "config", "contexts", env=elsewhere)
    assert result.exit_code == 0 and "demo" in result.output
    result = _run(
        "--talosconfig", str(tmp_path / "nope"), "config", "--talosconfig", str(talosconfig_file), "contexts"
    )
    assert result.exit_code == 0 and "demo" in result.output


def test_cli_bad_talosconfig_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("contexts: [unclosed\n")
    result = _run("config", "--talosconfig", str(path), "contexts")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "is not valid YAML" in result.output
    assert "Traceback" not in result.output


# ---- as a real subprocess ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    base = tmp_path_factory.mktemp("osctl")
    out = base / "cluster"
    result = _subprocess("config", "generate", "demo", ENDPOINT, "-o", str(out), home=base)
    return out, result


def test_subprocess_generate_writes_four_files(
    cli_generated: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, result = cli_generated
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for name in FILES:
        assert _mode(out / name) == 0o600
        assert str(out / name) in result.stdout


def test_subprocess_admin_cert_verifies_with_openssl(
    cli_generated: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = cli_generated
    ctx = talosconfig.load(out / "talosconfig").current()
    (tmp_path / "ca.pem").write_bytes(ctx.ca_pem())
    (tmp_path / "admin.pem").write_bytes(ctx.crt_pem())
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.pem", "-purpose", "sslclient", "admin.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", "admin.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "O = os:admin" in text and "CN = admin" in text


def test_subprocess_validate_and_refuse_overwrite(
    cli_generated: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = cli_generated
    ok = _subprocess("config", "validate", str(out / "worker.yaml"), home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "is valid" in ok.stdout
    again = _subprocess("config", "generate", "demo", ENDPOINT, "-o", str(out), home=tmp_path)
    assert again.returncode == 1
    assert "already exists; pass --force to overwrite it" in again.stderr
    assert "Traceback" not in again.stderr


def test_subprocess_validate_reports_three_mistakes(
    cli_generated: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = cli_generated
    text, paths = _three_mistakes((out / "worker.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = _subprocess("config", "validate", str(bad), home=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    issue_lines = [line for line in result.stderr.splitlines() if any(p in line for p in paths)]
    assert len(issue_lines) == 3, result.stderr
    for field_path in paths:
        assert sum(field_path in line for line in issue_lines) == 1


def test_subprocess_talosconfig_env_and_context_commands(
    cli_generated: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = cli_generated
    copy = tmp_path / "talosconfig"
    shutil.copy(out / "talosconfig", copy)
    env = {k: v for k, v in os.environ.items()} | {"HOME": str(tmp_path), "TALOSCONFIG": str(copy)}
    osctl = _osctl()
    node = subprocess.run([osctl, "config", "node", "10.5.0.7"], env=env, capture_output=True, text=True)
    assert node.returncode == 0, node.stderr
    listed = subprocess.run([osctl, "config", "contexts"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split() == ["*", "demo", "10.5.0.2", "10.5.0.7"]
