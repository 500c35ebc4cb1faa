"""The bake options table: one declaration makes the CLI options, BakeOptions, the bake-only set,
the manifest's record and the profile keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import bakery.bake_run
from bakery import bake_options as table
from bakery.cli import cli
from bakery.options import BakeOptions


def test_every_bake_options_field_is_declared_once() -> None:
    table.check_table()
    fields = [o.target for o in table.TABLE if o.target is not None]
    assert len(fields) == len(set(fields))


def test_platform_choices_come_from_the_plugins() -> None:
    platform = next(o for o in table.TABLE if o.target == "platform")
    assert list(platform.click_kwargs["type"].choices) == ["aws", "bare-metal", "kvm", "xen"]


def test_bake_only_and_manifest_are_derived() -> None:
    assert "disk_size" in table.BAKE_ONLY and "update_lock" in table.BAKE_ONLY
    assert "out" not in table.BAKE_ONLY and "cache" not in table.BAKE_ONLY
    record = table.manifest_options(BakeOptions(platform="aws", disk_size=3 << 30))
    assert record == {
        "platform": "aws",
        "config-url": None,
        "extra-kernel-args": "",
        "disk-size": 3 << 30,
        "kernel-flavour": None,
        "squashfs-level": 15,
        "locked": False,
    }


def test_the_squashfs_level_is_checked_when_parsed() -> None:
    option = next(o for o in table.TABLE if o.target == "squashfs_level")
    kind = option.click_kwargs["type"]
    assert kind.convert("3", None, None) == 3
    with pytest.raises(click.BadParameter, match="23 is not in the range 1<=x<=22"):
        kind.convert("23", None, None)


def test_options_from_converts_each_value() -> None:
    kw: dict[str, Any] = {o.param: o.click_kwargs.get("default") for o in table.TABLE}
    kw.update(disk_size="1536M", platform="xen", locked=False, update_lock=False)
    opts = table.options_from(kw)
    assert opts.disk_size == 1536 << 20 and opts.platform == "xen" and opts.flavour is None


@pytest.fixture
def baked(monkeypatch: pytest.MonkeyPatch) -> list[BakeOptions]:
    """What the command asked to bake; the bake itself is not what is tested here."""
    seen: list[BakeOptions] = []

    def refuse(_bake: Any, opts: BakeOptions, **_kw: Any) -> Any:
        seen.append(opts)
        raise bakery.bake_run.BakeError("stopped before baking")

    monkeypatch.setattr(bakery.bake_run, "guarded", refuse)
    return seen


def test_a_profile_sets_the_options_and_a_flag_wins(tmp_path: Path, baked: list[BakeOptions]) -> None:
    profile = tmp_path / "aws.yaml"
    profile.write_text("platform: aws\ndisk-size: 3G\nextra-kernel-args: quiet\n")
    r = CliRunner().invoke(
        cli, ["--profile", str(profile), "raw", "--disk-size", "4G", "--out", str(tmp_path)]
    )
    assert r.exit_code == 1 and "stopped before baking" in r.output
    assert baked[0].platform == "aws" and baked[0].extra_kernel_args == "quiet"
    assert baked[0].disk_size == 4 << 30  # the command line wins over the profile


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("platform: aws\ncolour: blue\n", "sets colour, which is not a bake option"),
        ("- platform\n", "must be a mapping of bake options"),
        ("platform: [\n", "is not valid YAML (line"),
    ],
)
def test_a_wrong_profile_is_one_sentence(
    tmp_path: Path, baked: list[BakeOptions], text: str, message: str
) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(text)
    r = CliRunner().invoke(cli, ["--profile", str(profile), "raw"])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert baked == []


def test_a_profile_value_is_checked_like_a_flag(tmp_path: Path, baked: list[BakeOptions]) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("disk-size: 1M\n")
    r = CliRunner().invoke(cli, ["--profile", str(profile), "raw"])
    assert r.exit_code == 2 and "1M is too small for the partitions" in r.output
    assert baked == []
