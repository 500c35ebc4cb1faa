"""osctl as a new user meets it, without a node: flag positions, --context, guards, help, stdin, no stubs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner, Result

from talos_os import talosconfig
from talos_os.config.generate import generate
from talos_os.osctl.cli import cli

ENDPOINT = "https://10.5.0.2:6443"


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    for name, text in generate("demo", ENDPOINT).files().items():
        (out / name).write_text(text)
    return out


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def test_global_flags_are_accepted_after_the_command(gen: Path, tmp_path: Path) -> None:
    tc = str(gen / "talosconfig")
    before = run("--talosconfig", tc, "config", "contexts", "-o", "json")
    after = run("config", "contexts", "--talosconfig", tc, "-o", "json")
    assert before.exit_code == after.exit_code == 0, after.output
    assert json.loads(before.output) == json.loads(after.output)
    # -n/-e/--context after a node command are parsed (not "No such option") and reach the checks:
    # -n behind -e is relayed through the endpoint (here nothing listens there).
    r = run("version", "-n", "10.9.9.9", "-e", "127.0.0.1:1", "--talosconfig", tc)
    assert r.exit_code == 1
    assert "error: 10.9.9.9: cannot reach the node API at 127.0.0.1:1: connection refused" in r.output
    r = run("services", "--context", "prod", "--talosconfig", tc)
    assert r.exit_code == 1
    assert "--context prod: the talosconfig has no such context (it has: demo)" in r.output


def test_the_contexts_nodes_are_relayed_through_an_explicit_endpoint(gen: Path, tmp_path: Path) -> None:
    path = tmp_path / "config"
    cfg = talosconfig.load(gen / "talosconfig")
    cfg.current().nodes = ["10.5.0.3"]
    talosconfig.save(cfg, path)
    r = run("version", "-e", "127.0.0.1:1", "--talosconfig", str(path))
    assert r.exit_code == 1
    assert "error: 10.5.0.3: cannot reach the node API at 127.0.0.1:1: connection refused" in r.output


def test_context_flag_edits_that_context_and_keeps_the_current_one(gen: Path, tmp_path: Path) -> None:
    path = tmp_path / "config"
    assert run("config", "merge", str(gen / "talosconfig"), "--talosconfig", str(path)).exit_code == 0
    other = talosconfig.load(path)
    other.contexts["prod"] = talosconfig.Context(endpoints=["10.1.1.1"])
    talosconfig.save(other, path)
    r = run("--context", "prod", "--talosconfig", str(path), "config", "endpoint", "10.2.2.2")
    assert r.exit_code == 0 and r.output == "endpoints of context prod: 10.2.2.2\n"
    cfg = talosconfig.load(path)
    assert cfg.context == "demo" and cfg.contexts["prod"].endpoints == ["10.2.2.2"]
    assert cfg.contexts["demo"].endpoints == ["10.5.0.2"]
    r = run("config", "node", "10.3.3.3", "--context", "nope", "--talosconfig", str(path))
    assert r.exit_code == 1 and "--context nope: the talosconfig has no such context" in r.output


def test_same_endpoint_and_node_is_not_refused(gen: Path) -> None:
    """-e and -n naming the same host is no relaying: the call goes ahead (and fails to connect)."""
    r = run("--talosconfig", str(gen / "talosconfig"), "-e", "127.0.0.1:1", "-n", "127.0.0.1:1", "version")
    assert r.exit_code == 1 and "error: 127.0.0.1:1: cannot reach the node API" in r.output


@pytest.mark.parametrize("direction", ["into", "from"])
def test_a_machine_config_is_never_read_or_written_as_a_talosconfig(
    gen: Path, tmp_path: Path, direction: str
) -> None:
    worker = tmp_path / "worker.yaml"
    worker.write_text((gen / "worker.yaml").read_text())
    before = worker.read_bytes()
    if direction == "into":  # the case: --talosconfig worker.yaml config merge gen/talosconfig
        r = run("--talosconfig", str(worker), "config", "merge", str(gen / "talosconfig"))
    else:
        r = run("--talosconfig", str(tmp_path / "config"), "config", "merge", str(worker))
        assert not (tmp_path / "config").exists()
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {worker} is a machine config, not a talosconfig: use the talosconfig file that "
        "`osctl config generate` wrote next to it\n"
    )
    assert worker.read_bytes() == before
    r = run("--talosconfig", str(worker), "version")
    assert r.exit_code == 1 and "is a machine config, not a talosconfig" in r.output


def test_unknown_top_level_fields_are_not_a_talosconfig(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: Config\n")
    r = run("--talosconfig", str(path), "config", "contexts")
    assert (
        r.exit_code == 1
        and "has unknown top-level field(s) apiVersion, kind: it is not a talosconfig" in r.output
    )


def test_output_formats_of_contexts(gen: Path) -> None:
    tc = str(gen / "talosconfig")
    table = run("config", "contexts", "--talosconfig", tc).output.splitlines()
    assert table[0].split() == ["CURRENT", "NAME", "ENDPOINTS", "NODES"]
    as_yaml = yaml.safe_load(run("-o", "yaml", "config", "contexts", "--talosconfig", tc).output)
    assert as_yaml == [{"name": "demo", "current": True, "endpoints": ["10.5.0.2"], "nodes": []}]
    assert run("config", "contexts", "-o", "xml", "--talosconfig", tc).exit_code == 2


def test_validate_reads_stdin(gen: Path) -> None:
    r = run("config", "validate", "-", input=(gen / "worker.yaml").read_text())
    assert r.exit_code == 0 and r.output == "stdin is valid\n"
    r = run("config", "validate", "-", input="version: v1\nmachine: {type: nope}\n")
    assert r.exit_code == 1 and "stdin is not valid" in r.output


def test_merge_reads_stdin(gen: Path, tmp_path: Path) -> None:
    path = tmp_path / "config"
    r = run("--talosconfig", str(path), "config", "merge", "-", input=(gen / "talosconfig").read_text())
    assert r.exit_code == 0 and talosconfig.load(path).context == "demo"
    r = run("--talosconfig", str(path), "config", "merge", "-", input=(gen / "worker.yaml").read_text())
    assert r.exit_code == 1 and "stdin is a machine config, not a talosconfig" in r.output


def test_kubernetes_version_with_or_without_v(tmp_path: Path) -> None:
    for given in ("1.29.4", "v1.29.4"):
        out = tmp_path / given
        r = run("config", "generate", "demo", ENDPOINT, "-o", str(out), "--kubernetes-version", given)
        assert r.exit_code == 0, r.output
        assert (
            yaml.safe_load((out / "init.yaml").read_text())["cluster"]["kubernetes"]["version"] == "v1.29.4"
        )


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
    return found


def test_every_command_has_an_example_and_every_option_a_description() -> None:
    commands = _commands(cli)
    assert {"version", "services", "config generate", "completion"} <= {n for n, _c in commands}
    for name, command in commands:
        shown = run(*name.split(), "--help")
        assert shown.exit_code == 0, name
        assert "Example" in shown.output, f"osctl {name} --help has no example"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"osctl {name}: {param.opts} has no description"
        # the global options are listed on every command, since they may follow it
        assert "--talosconfig PATH" in shown.output and "--context NAME" in shown.output, name


STUBLESS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("talos_os.api.gen"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from talos_os.osctl.cli import main
sys.argv[0] = "osctl"
main()
"""


def test_osctl_works_without_the_generated_stubs(gen: Path, tmp_path: Path) -> None:
    def osctl(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(tmp_path)}
        return subprocess.run(
            [sys.executable, "-c", STUBLESS, *args], capture_output=True, text=True, env=env, timeout=60
        )

    helped = osctl("--help")
    shown = " ".join(helped.stdout.split())
    assert helped.returncode == 0 and "config " in shown and "run `make proto` in a source checkout" in shown
    generated = osctl("config", "generate", "demo", ENDPOINT, "-o", str(tmp_path / "g"))
    assert generated.returncode == 0 and (tmp_path / "g" / "talosconfig").exists()
    assert osctl("config", "validate", str(tmp_path / "g" / "worker.yaml")).returncode == 0
    assert osctl("completion", "bash").returncode == 0
    version = osctl("version")
    assert version.returncode == 2 and "Traceback" not in version.stderr
    assert "the node API stubs (talos_os.api.gen) are missing from this installation" in version.stderr


def test_osctl_starts_without_the_config_model_or_the_cluster_machinery() -> None:
    """Every osctl call pays for what the CLI imports at start: a node command needs grpc and the
    client certificate check, not pydantic, the config model or QEMU cluster code (each command that
    needs them imports them)."""
    heavy = ("pydantic", "talos_os.config.model", "talos_os.config.loader", "talos_os.cluster.create",
             "talos_os.cluster.forward")  # fmt: skip
    code = f"import sys, talos_os.osctl.cli; print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_config_package_loads_the_model_when_a_name_is_first_used() -> None:
    code = (
        "import sys, talos_os.config as c, talos_os.config.generate; assert 'talos_os.config.model' not in sys.modules; "
        "m = c.MachineConfig; assert 'talos_os.config.model' in sys.modules and c.Mode.METAL == 'metal'; "
        "from talos_os.config import ConfigError, load; print(m.__name__, ConfigError.__name__, load.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["MachineConfig", "ConfigError", "load"], result.stderr
    missing = subprocess.run(
        [sys.executable, "-c", "import talos_os.config as c; c.NoSuchThing"], capture_output=True, text=True
    )
    assert "module 'talos_os.config' has no attribute 'NoSuchThing'" in missing.stderr


def test_every_name_the_config_package_exports_resolves_lazily() -> None:
    """The package lists its names three times (typing imports, where each lives, __all__): a name
    in one list but not another would fail only when first used, so all are resolved here."""
    import talos_os.config as config

    assert sorted(config.__all__) == sorted(config._EXPORTS)
    for name in config.__all__:
        assert getattr(config, name).__module__ == config._EXPORTS[name], name
