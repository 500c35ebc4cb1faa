"""A bake never rewrites the tracked lock unless asked: a scratch copy takes the fetcher's updates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from bakery.cli import cli
from bakery.lock import Lock, Pin
from bakery.lockguard import guarded, moved_pins

OLD = Pin("6.1.0-56", "linux-image-6.1.0-56-cloud-amd64.deb", "a" * 64)
NEW = Pin("6.1.0-57", "linux-image-6.1.0-57-cloud-amd64.deb", "b" * 64)


@dataclass(frozen=True)
class Opts:
    """The two BakeOptions fields the guard reads."""

    lock_path: Path
    locked: bool = False


def tracked_lock(tmp_path: Path) -> Path:
    path = tmp_path / "bake.lock"
    Lock(
        debs={"linux-image-cloud": OLD, "zstd": Pin("1.5", "zstd.deb", "c" * 64)}, kernels={"cloud": "k56"}
    ).save(path)
    return path


def fetcher_moves_the_kernel(opts: Opts) -> str:
    """What a bake does when apt dropped the pinned kernel: it updates the lock it was given."""
    lock = Lock.load(opts.lock_path)
    lock.debs["linux-image-cloud"] = NEW
    lock.kernels["cloud"] = "k57"
    lock.save(opts.lock_path)
    return f"baked with {opts.lock_path}"


def test_a_plain_bake_leaves_the_tracked_lock_and_says_what_moved(tmp_path: Path) -> None:
    path = tracked_lock(tmp_path)
    before = path.read_bytes()
    said: list[str] = []
    result, moved = guarded(fetcher_moves_the_kernel, Opts(path), update_lock=False, say=said.append)
    assert path.read_bytes() == before
    assert result != f"baked with {path}", "the bake got a scratch copy"
    assert moved == ["kernel cloud: k56 -> k57", "linux-image-cloud: 6.1.0-56 -> 6.1.0-57"]
    (line,) = said
    assert line.startswith(f"{path} was left as it is, though this bake used other versions (kernel cloud")
    assert line.endswith("pass --update-lock to record them")


def test_update_lock_writes_it(tmp_path: Path) -> None:
    path = tracked_lock(tmp_path)
    said: list[str] = []
    result, moved = guarded(fetcher_moves_the_kernel, Opts(path), update_lock=True, say=said.append)
    assert result == f"baked with {path}" and Lock.load(path).debs["linux-image-cloud"] == NEW
    assert moved and said == []


def test_nothing_moved_nothing_said(tmp_path: Path) -> None:
    path = tracked_lock(tmp_path)
    said: list[str] = []
    _result, moved = guarded(lambda _o: None, Opts(path), update_lock=False, say=said.append)
    assert moved == [] and said == []
    assert moved_pins(Lock(), Lock(wheels={"grpcio": OLD})) == ["wheel grpcio: added 6.1.0-56"]


def test_update_lock_is_a_bake_option(tmp_path: Path) -> None:
    assert "--update-lock" in CliRunner().invoke(cli, ["raw", "--help"]).output
    image = tmp_path / "x.raw"
    image.write_bytes(b"x")
    r = CliRunner().invoke(cli, ["kvm", "--image", str(image), "--update-lock", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "--update-lock only applies when baking" in r.output
