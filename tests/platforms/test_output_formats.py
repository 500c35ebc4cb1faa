"""``talos-bake ... -o table|json|yaml``: every command that prints a result prints one JSON or YAML
document on stdout (paths absolute, times ISO 8601), progress stays on stderr, table is today's text.

Nothing here bakes, boots or reaches past loopback: ``--image`` takes small crafted images
(tests/fakeimage.py), aws runs ``--dry-run`` against a dead loopback endpoint, raw/qcow2 get a bake
result from a stand-in for the bake, iso a stand-in for the ISO writer.
"""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from fakeimage import make_image

import bakery.bake_run
import bakery.cli
from bakery import iso as live_iso
from bakery.cli import cli
from bakery.image import BakeResult
from bakery.stepcache import Staging, StepCache
from talos_os.config.generate import generate

NO_AWS = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
KEY = "ab" * 32


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No region, credentials or profile from the machine running the tests; no metadata service."""
    for key in NO_AWS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield


def run(*args: str, fmt: str | None = None) -> Result:
    argv = [*args, "-o", fmt] if fmt else list(args)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    return result


def parsed(result: Result, fmt: str) -> dict[str, Any]:
    """stdout is exactly one document of ``fmt``."""
    doc = json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    assert isinstance(doc, dict)
    return doc


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


# --- raw and qcow2 ------------------------------------------------------------------------------------


@pytest.fixture
def fake_bake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The bake replaced by one that writes the files a bake writes (tiny) and returns its result."""
    calls: list[dict[str, Any]] = []

    def guarded(bake: Any, opts: Any, **_kw: Any) -> tuple[BakeResult, list[str]]:
        calls.append({"platform": opts.platform, "formats": bake.keywords["formats"]})
        out: Path = opts.out
        out.mkdir(parents=True, exist_ok=True)
        raw = out / f"talos-{opts.platform}.raw"
        raw.write_bytes(b"\0" * 4096)
        files = {name: out / name for name in ("m.json", "vmlinuz", "initramfs.zst")}
        for path in files.values():
            path.write_bytes(b"x")
        converted = {}
        for fmt in bake.keywords["formats"]:
            converted[fmt] = out / f"talos-{opts.platform}.{fmt}"
            converted[fmt].write_bytes(b"QFI\xfb" + b"\0" * 60)
        steps = {
            "kernel": {"key": KEY, "cached": True},
            "disk": {"key": "cd" * 32, "cached": False, "seconds": 1.5},
        }
        data = {
            "talos_os_version": "0.1.0",
            "platform": opts.platform,
            "image": raw.name,
            "sha256": "ef" * 32,
            "size_apparent": opts.disk_size,
            "size_allocated": 4096,
            "kernel": {
                "package": "linux-image-cloud-amd64",
                "version": "6.1",
                "release": "6.1.0-57-cloud-amd64",
            },
            "cmdline": f"console=ttyS0 talos.platform={opts.platform} talos.root=ROOT-A",
            "source_date_epoch": 1704067200,
            "steps": steps,
            "timings_seconds": {"disk": 1.5},
        }
        result = BakeResult(raw, files["m.json"], files["vmlinuz"], files["initramfs.zst"], data, converted)
        return result, []

    monkeypatch.setattr(bakery.bake_run, "guarded", guarded)
    return calls


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_raw_prints_what_was_written(fake_bake: list[dict[str, Any]], tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    r = run("raw", "--platform", "aws", "--out", str(out), "--cache", str(tmp_path / "c"), fmt=fmt)
    doc = parsed(r, fmt)
    assert doc["image"] == str(out / "talos-aws.raw") and doc["format"] == "raw"
    assert doc["raw"] == doc["image"] and doc["manifest"] == str(out / "m.json")
    assert doc["platform"] == "aws" and doc["sha256"] == "ef" * 32
    assert doc["size_bytes"] == 2 << 30 and doc["allocated_bytes"] == 4096
    assert "talos.platform=aws" in doc["cmdline"] and doc["kernel_release"] == "6.1.0-57-cloud-amd64"
    assert doc["source_date"] == "2024-01-01T00:00:00Z"
    assert doc["steps"] == {
        "kernel": {"key": KEY, "cached": True},
        "disk": {"key": "cd" * 32, "cached": False},
    }
    assert "timings_seconds" not in doc and "qcow2" not in doc
    assert fake_bake == [{"platform": "aws", "formats": ()}]


def test_raw_table_is_the_path(fake_bake: list[dict[str, Any]], tmp_path: Path) -> None:
    r = run("raw", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"))
    assert r.stdout == f"{tmp_path / 'out' / 'talos-kvm.raw'}\n"
    assert run("raw", "--out", str(tmp_path / "out"), fmt="table").stdout == r.stdout


def test_qcow2_yaml(fake_bake: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "out"
    doc = parsed(run("qcow2", "--out", str(out), "--cache", str(tmp_path / "c"), fmt="yaml"), "yaml")
    assert doc["image"] == str(out / "talos-kvm.qcow2") and doc["format"] == "qcow2"
    assert doc["raw"] == str(out / "talos-kvm.raw") and doc["qcow2_bytes"] == 64
    assert fake_bake == [{"platform": "kvm", "formats": ("qcow2",)}]


def test_an_unknown_format_is_refused_before_baking(fake_bake: list[dict[str, Any]], tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["raw", "--out", str(tmp_path / "out"), "-o", "xml"])
    assert r.exit_code == 2 and "'xml' is not one of 'table', 'json', 'yaml'" in r.stderr
    assert fake_bake == [] and not (tmp_path / "out").exists()


# --- cache --------------------------------------------------------------------------------------------


def filled_cache(root: Path) -> Path:
    store = StepCache(root)
    for step, key in (("kernel", KEY), ("kernel", "12" * 32), ("disk", "34" * 32)):

        def make(staging: Staging) -> None:
            (staging.out / "f").write_bytes(b"x" * 10000)

        store.build(step, key, {}, make)
    (root / "debs").mkdir()
    (root / "debs" / "a.deb").write_bytes(b"deb" * 1000)
    return root


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_cache_list(tmp_path: Path, fmt: str) -> None:
    cache = filled_cache(tmp_path / "cache")
    doc = parsed(run("cache", "list", "--cache", str(cache), fmt=fmt), fmt)
    assert doc["cache"] == str(cache)
    assert (doc["steps"][0]["step"], doc["steps"][0]["key"]) == ("disk", "34" * 32)
    assert {e["key"] for e in doc["steps"]} == {KEY, "12" * 32, "34" * 32}  # whole keys, not the table's 16
    for entry in doc["steps"]:
        assert entry["size_bytes"] >= 10000 and entry["last_used"].endswith("Z") and "T" in entry["last_used"]
    assert doc["step_bytes"] == sum(e["size_bytes"] for e in doc["steps"])
    assert doc["downloads"]["debs"]["files"] == 1 and doc["downloads"]["wheels"] == {"files": 0, "bytes": 0}
    table = run("cache", "list", "--cache", str(cache)).stdout
    assert table.startswith("STEP") and "step outputs: 3 entries" in table


def test_cache_prune(tmp_path: Path) -> None:
    cache = filled_cache(tmp_path / "cache")
    doc = parsed(run("cache", "prune", "--keep", "0", "--cache", str(cache), fmt="json"), "json")
    assert sorted(e["key"] for e in doc["removed"]) == sorted([KEY, "12" * 32, "34" * 32])
    assert doc["kept"] == 0 and doc["kept_bytes"] == 0 and doc["freed_bytes"] >= 30000


# --- publishing commands with --image -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_kvm(tmp_path: Path, fmt: str) -> None:
    image = make_image(tmp_path / "talos-kvm.raw", "kvm")
    out = tmp_path / "out"
    r = run("kvm", "--image", str(image), "--out", str(out), "--name", "n1", "--virt-type", "qemu", fmt=fmt)
    doc = parsed(r, fmt)
    assert doc["disk"] == str(out / "talos-kvm.qcow2") and Path(doc["disk"]).exists()
    assert doc["xml"] == str(out / "n1.xml") and Path(doc["xml"]).exists() and doc["cidata"] is None
    assert doc["virt_install"].startswith("virt-install --connect qemu:///system --name n1 --virt-type qemu")
    assert doc["domain_type"] == "qemu" and doc["network"] == "network=default"
    assert doc["defined"] is False and doc["started"] is False
    assert "qcow2: done" in r.stderr  # progress stays on stderr


def test_kvm_defined_with_config(tmp_path: Path) -> None:
    image = make_image(tmp_path / "talos-kvm.raw", "kvm")
    config = tmp_path / "worker.yaml"
    config.write_text(generate("demo", "https://10.0.0.1:6443").worker)
    out = tmp_path / "out"
    args = ["kvm", "--image", str(image), "--out", str(out), "--name", "t16o", "--config", str(config)]
    r = run(*args, "--define", "--uri", "test:///default", "--firmware", "bios", fmt="json")
    doc = parsed(r, "json")
    assert doc["cidata"] == str(out / "t16o-cidata.iso") and doc["defined"] is True
    assert doc["uri"] == "test:///default"
    table = run(*args, "--firmware", "bios").stdout.splitlines()
    assert table[:3] == [doc["disk"], doc["cidata"], doc["xml"]] and table[3].startswith("virt-install")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_xen(tmp_path: Path, fmt: str) -> None:
    image = make_image(tmp_path / "talos-xen.raw", "xen")
    out = tmp_path / "out"
    r = run("xen", "--image", str(image), "--out", str(out), "--name", "x1", fmt=fmt)
    doc = parsed(r, fmt)
    assert doc["image"] == str(image) and doc["disk"] == str(out / "x1.raw")
    for key in ("disk", "hvm_config", "pv_config", "vm_data_howto"):
        assert Path(doc[key]).is_file()
    assert doc["bridge"] == "xenbr0" and doc["memory_mib"] == 2048
    assert "xenstore" in r.stderr  # the vm-data how-to is for people: stderr


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_aws_dry_run(tmp_path: Path, fmt: str) -> None:
    image = make_image(tmp_path / "talos-aws.raw", "aws")
    args = ["aws", "--ami", "--dry-run", "--image", str(image), "--region", "eu-west-1", "--name", "talos-x",
            "--copy-to-regions", "us-east-1", "--endpoint-url", dead_endpoint()]  # fmt: skip
    doc = parsed(run(*args, fmt=fmt), fmt)
    assert doc["dry_run"] is True and doc["region"] == "eu-west-1" and doc["copy_to"] == ["us-east-1"]
    assert doc["image"] == {
        "path": str(image),
        "size_bytes": 16 << 20,
        "blocks": 32,
        "block_bytes": 512 << 10,
    }
    upload = doc["upload"]
    assert (
        upload["method"] == "ebs"
        and upload["data_blocks"] + upload["hole_blocks"] + upload["zero_blocks"] == 32
    )
    assert doc["register"]["boot_mode"] == "uefi-preferred" and doc["register"]["volume_gib"] == 1
    assert doc["tags"]["talos-os:image"] == "talos-aws.raw"
    text = run(*args).stdout
    assert (
        text.startswith("plan (dry run") and "= 32 blocks of 512 KiB" in text and "copy to: us-east-1" in text
    )


def test_aws_dry_run_of_a_bake(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["aws", "--ami", "--dry-run", "--region", "eu-west-1", "--name", "talos-x", "--method", "import",
            "--bucket", "b1", "--out", str(out), "--disk-size", "4G"]  # fmt: skip
    doc = parsed(run(*args, fmt="yaml"), "yaml")
    assert doc["image"] == {"path": str(out / "talos-aws.raw"), "baked_first": True, "size_bytes": 4 << 30}
    assert doc["upload"] == {
        "method": "import",
        "region": "eu-west-1",
        "bucket": "b1",
        "prefix": "talos-os-import/",
    }
    assert doc["register"]["volume_gib"] == 4 and not out.exists()
    assert "image: baked first into" in run(*args).stdout


def test_install(tmp_path: Path) -> None:
    image = make_image(tmp_path / "talos-bare-metal.raw", "bare-metal", size_mib=24)
    disk = tmp_path / "disk.raw"
    doc = parsed(run("install", "--image", str(image), "--disk", str(disk), fmt="json"), "json")
    assert doc["image"] == str(image) and doc["disk"] == str(disk) and doc["kind"] == "file"
    assert doc["image_bytes"] == 24 << 20 and doc["verified"] is True and len(doc["sha256"]) == 64
    assert doc["backup_gpt_moved_to_bytes"] is None and doc["notes"] == []
    forced = parsed(run("install", "--image", str(image), "--disk", str(disk), "--force", fmt="yaml"), "yaml")
    assert forced["notes"] and "overwrote (--force)" in forced["notes"][0]


def test_iso(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ISO writer is a stand-in (the crafted image has no kernel); the command's record is real."""
    image = make_image(tmp_path / "talos-bare-metal.raw", "bare-metal")

    def sources(raw: Path, work: Path) -> live_iso.IsoSources:
        assert raw == image
        return live_iso.IsoSources(
            kernel=work, initramfs=work, squashfs=work, cmdline="talos.platform=bare-metal"
        )

    def build(_sources: live_iso.IsoSources, dest: Path, _work: Path, **_kw: Any) -> tuple[Path, str]:
        dest.write_bytes(b"\0" * 8192)
        return dest, "TALOS_0_1_0"

    monkeypatch.setattr(live_iso, "sources_from_image", sources)
    monkeypatch.setattr(live_iso, "build", build)
    out = tmp_path / "out"
    doc = parsed(run("iso", "--image", str(image), "--out", str(out), fmt="json"), "json")
    assert doc == {
        "iso": str(out / "talos-bare-metal.iso"),
        "image": str(image),
        "size_bytes": 8192,
        "volume": "TALOS_0_1_0",
        "root": f"iso:TALOS_0_1_0/{live_iso.ROOT_PATH}",
    }
    assert run("iso", "--image", str(image), "--out", str(out)).stdout == f"{out / 'talos-bare-metal.iso'}\n"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_cidata(tmp_path: Path, fmt: str) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(generate("demo", "https://10.0.0.1:6443").worker)
    out = tmp_path / "out"
    r = run("cidata", "--user-data", str(config), "--hostname", "worker-1", "--out", str(out), fmt=fmt)
    doc = parsed(r, fmt)
    iso = out / "cidata.iso"
    assert doc["iso"] == str(iso) and doc["size_bytes"] == iso.stat().st_size
    assert doc["mode"] == "0600" and stat.S_IMODE(iso.stat().st_mode) == 0o600
    assert doc["volume"] == "cidata" and doc["hostname"] == "worker-1"
    assert doc["instance_id"].startswith("talos-")
    assert "secrets" not in r.stdout and "machine:" not in r.stdout  # never the config itself


def test_every_result_command_has_the_option() -> None:
    """-o on every talos-bake command that prints a result, table by default."""
    group = cli
    names = ["raw", "qcow2", "kvm", "xen", "aws", "iso", "install", "cidata", "cache list", "cache prune"]
    for name in names:
        command: click.Command = group
        for part in name.split():
            assert isinstance(command, click.Group)
            found = command.get_command(click.Context(command), part)
            assert found is not None, name
            command = found
        (option,) = [p for p in command.params if p.name == "output"]
        assert isinstance(option, click.Option) and option.opts == ["-o", "--output"], name
        assert option.default == "table", name


def test_documents_hold_only_plain_values() -> None:
    """Paths as strings, aware times in ISO 8601 UTC, tuples and sets as lists: what jq and YAML readers expect."""
    from datetime import UTC, datetime, timedelta, timezone

    from talos_os.output import document, to_json

    value = {
        "path": Path("/x/y"),
        "when": datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=2))),
        "pair": (1, 2),
        "tags": frozenset({"a"}),
        "utc": datetime(2026, 1, 1, tzinfo=UTC),
    }
    expected = {
        "path": "/x/y",
        "when": "2026-12-01T07:00:00Z",
        "pair": [1, 2],
        "tags": ["a"],
        "utc": "2026-01-01T00:00:00Z",
    }
    assert json.loads(to_json(value)) == expected
    assert yaml.safe_load(document("yaml", value, "ignored")) == expected
    assert document("table", value, "text for people") == "text for people"
