"""The client config: path resolution, load/save, merge, contexts, endpoints and nodes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from talos_os import pki, talosconfig
from talos_os.talosconfig import Context, TalosConfig, TalosConfigError


@pytest.fixture(scope="module")
def creds() -> tuple[pki.CertKey, pki.CertKey]:
    ca = pki.new_os_ca("demo")
    return ca, pki.issue_client_certificate(ca, "admin")


def _ctx(creds: tuple[pki.CertKey, pki.CertKey], *endpoints: str) -> Context:
    ca, admin = creds
    return Context(
        endpoints=list(endpoints), nodes=[], ca=ca.b64_crt(), crt=admin.b64_crt(), key=admin.b64_key()
    )


def _config(creds: tuple[pki.CertKey, pki.CertKey], **contexts: list[str]) -> TalosConfig:
    built = {name: _ctx(creds, *eps) for name, eps in contexts.items()}
    return TalosConfig(context=next(iter(built), None), contexts=built)


# ---- path resolution ---------------------------------------------------------------------------------------


def test_explicit_path_beats_env_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {"TALOSCONFIG": "/env/config"}
    assert talosconfig.resolve_path("/explicit", env) == Path("/explicit")
    assert talosconfig.resolve_path(None, env) == Path("/env/config")
    assert talosconfig.resolve_path(None, {}) == tmp_path / ".talos" / "config"
    assert talosconfig.resolve_path(None, {"TALOSCONFIG": ""}) == tmp_path / ".talos" / "config"
    assert talosconfig.resolve_path("~/x", {}) == tmp_path / "x"


def test_resolve_path_reads_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALOSCONFIG", str(tmp_path / "cfg"))
    assert talosconfig.resolve_path() == tmp_path / "cfg"


# ---- load / save -------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_with_mode_0600(
    creds: tuple[pki.CertKey, pki.CertKey], tmp_path: Path
) -> None:
    cfg = _config(creds, demo=["10.5.0.2"])
    path = tmp_path / "new-dir" / "config"
    talosconfig.save(cfg, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = talosconfig.load(path)
    assert again == cfg
    assert again.current().endpoints == ["10.5.0.2"]
    assert again.current().ca_pem() == creds[0].cert_pem
    assert again.current().key_pem() == creds[1].key_pem


def test_saved_yaml_has_the_documented_shape(creds: tuple[pki.CertKey, pki.CertKey]) -> None:
    import yaml

    data = yaml.safe_load(_config(creds, demo=["10.5.0.2"]).to_yaml())
    assert data["context"] == "demo"
    assert set(data["contexts"]["demo"]) == {"endpoints", "nodes", "ca", "crt", "key"}


def test_missing_file_names_the_path_and_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(TalosConfigError) as err:
        talosconfig.load(path)
    assert str(path) in str(err.value) and "osctl config generate" in str(err.value)


def test_bad_yaml_is_one_clear_sentence(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("context: demo\ncontexts: [unclosed\n")
    with pytest.raises(TalosConfigError, match="is not valid YAML at line") as err:
        talosconfig.load(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list\n", "must be a YAML mapping"),
        ("contexts: [a]\n", "'contexts' must be a mapping"),
        ("context: [x]\ncontexts: {}\n", "'context' must be a context name"),
        ("contexts: {demo: 3}\n", "context 'demo' must be a mapping"),
        ("contexts: {demo: {endpoint: [a]}}\n", "unknown field"),
        ("contexts: {demo: {endpoints: a}}\n", "contexts.demo.endpoints must be a list of strings"),
        ("contexts: {demo: {ca: 3}}\n", "contexts.demo.ca must be a string"),
    ],
)
def test_malformed_configs_are_explained(text: str, message: str) -> None:
    with pytest.raises(TalosConfigError, match=message):
        talosconfig.loads(text)


def test_empty_file_is_an_empty_config() -> None:
    cfg = talosconfig.loads("")
    assert cfg.context is None and cfg.contexts == {}
    with pytest.raises(TalosConfigError, match="no current context"):
        cfg.current()


def test_missing_credentials_are_explained() -> None:
    ctx = Context(endpoints=["a"])
    with pytest.raises(TalosConfigError, match="has no key"):
        ctx.key_pem()
    with pytest.raises(TalosConfigError, match="not valid base64"):
        Context(ca="%%%").ca_pem()


def test_load_or_empty_tolerates_a_missing_file(tmp_path: Path) -> None:
    assert talosconfig.load_or_empty(tmp_path / "nope") == TalosConfig()


# ---- contexts ----------------------------------------------------------------------------------------------


def test_use_context_switches_or_names_the_available_ones(creds: tuple[pki.CertKey, pki.CertKey]) -> None:
    cfg = _config(creds, demo=["a"], prod=["b"])
    cfg.use_context("prod")
    assert cfg.current().endpoints == ["b"]
    with pytest.raises(
        TalosConfigError, match="context 'staging' does not exist; available contexts: demo, prod"
    ):
        cfg.use_context("staging")


def test_dangling_current_context_is_explained(creds: tuple[pki.CertKey, pki.CertKey]) -> None:
    cfg = _config(creds, demo=["a"])
    cfg.context = "gone"
    with pytest.raises(TalosConfigError, match=r"'gone' does not exist.*osctl config context NAME"):
        cfg.current()


def test_set_endpoints_and_nodes(creds: tuple[pki.CertKey, pki.CertKey]) -> None:
    cfg = _config(creds, demo=["a"])
    cfg.set_endpoints(["10.5.0.2", " 10.5.0.3 ", "10.5.0.2"])
    cfg.set_nodes(["10.5.0.4"])
    assert cfg.current().endpoints == ["10.5.0.2", "10.5.0.3"]
    assert cfg.current().nodes == ["10.5.0.4"]
    cfg.set_nodes([])
    assert cfg.current().nodes == []
    with pytest.raises(TalosConfigError, match="at least one endpoint"):
        cfg.set_endpoints([])
    with pytest.raises(TalosConfigError, match="is not a host name"):
        cfg.set_nodes(["a b"])


# ---- merge -------------------------------------------------------------------------------------------------


def test_merge_renames_clashes_like_talosctl(creds: tuple[pki.CertKey, pki.CertKey]) -> None:
    cfg = _config(creds, demo=["a"], other=["o"])
    renames = cfg.merge(_config(creds, demo=["b"]))
    assert renames == [("demo", "demo-1")]
    renames = cfg.merge(_config(creds, demo=["c"]))
    assert renames == [("demo", "demo-2")]
    assert {n: c.endpoints for n, c in cfg.contexts.items()} == {
        "demo": ["a"],
        "other": ["o"],
        "demo-1": ["b"],
        "demo-2": ["c"],
    }
    assert cfg.context == "demo-2"


def test_merge_adds_new_names_and_skips_identical_contexts(creds: tuple[pki.CertKey, pki.CertKey]) -> None:
    cfg = _config(creds, demo=["a"])
    assert cfg.merge(_config(creds, demo=["a"])) == []
    assert list(cfg.contexts) == ["demo"]
    assert cfg.merge(_config(creds, prod=["p"])) == []
    assert cfg.context == "prod" and list(cfg.contexts) == ["demo", "prod"]


def test_merge_copies_rather_than_shares(creds: tuple[pki.CertKey, pki.CertKey]) -> None:
    cfg, other = TalosConfig(), _config(creds, demo=["a"])
    cfg.merge(other)
    cfg.set_endpoints(["z"])
    assert other.current().endpoints == ["a"]
