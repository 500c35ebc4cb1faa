"""The step cache and the pipeline with toy steps (keys, skipping, damage, list and prune), and the batched download."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bakery.errors import BakeError
from bakery.pipeline import Pipeline, Step, path_digest
from bakery.progress import Progress
from bakery.stepcache import Entry, Staging, StepCache, file_digest
from talos_os.install.sparse import sha256_hex


@dataclass
class Ctx:
    """A toy bake: one option per step, and a log of which steps ran."""

    word: str = "hello"
    suffix: str = "!"
    ran: list[str] = field(default_factory=list)


def make_base(ctx: Ctx, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    ctx.ran.append("base")
    (staging.out / "base.txt").write_text(ctx.word)
    (staging.out / "sub").mkdir()
    (staging.out / "sub" / "link").symlink_to("../base.txt")
    staging.meta["length"] = len(ctx.word)


def make_top(ctx: Ctx, staging: Staging, inputs: Mapping[str, Entry]) -> None:
    ctx.ran.append("top")
    base = (inputs["base"].out / "base.txt").read_text()
    (staging.out / "top.txt").write_text(base + ctx.suffix)
    staging.meta["base"] = inputs["base"].meta


STEPS = {
    "base": Step[Ctx]("base", make_base, params=lambda ctx: {"word": ctx.word}, code=("bakery.stepcache",)),
    "top": Step[Ctx]("top", make_top, needs=("base",), params=lambda ctx: {"suffix": ctx.suffix}),
}


def pipeline(ctx: Ctx, cache: Path, messages: list[str] | None = None) -> Pipeline[Ctx]:
    progress = Progress(quiet=True)
    if messages is not None:
        progress.say = messages.append  # type: ignore[method-assign]
    return Pipeline(STEPS, ctx, StepCache(cache), progress)


def test_a_cached_step_is_not_run_again(tmp_path: Path) -> None:
    first = Ctx()
    top = pipeline(first, tmp_path).get("top")
    assert first.ran == ["base", "top"]
    assert (top.out / "top.txt").read_text() == "hello!"
    assert top.meta == {"base": {"length": 5}}
    again = Ctx()
    p = pipeline(again, tmp_path)
    assert (p.get("top").out / "top.txt").read_text() == "hello!"
    assert again.ran == [] and p.report["top"]["cached"] is True
    # the record names every step behind the target, even one skipped because a later output was cached
    assert p.record("top") == {
        "base": {"key": p.key("base"), "cached": True},
        "top": {"key": p.key("top"), "cached": True},
    }


def test_only_the_steps_whose_inputs_changed_run(tmp_path: Path) -> None:
    pipeline(Ctx(), tmp_path).get("top")
    other_suffix = Ctx(suffix="?")
    assert (pipeline(other_suffix, tmp_path).get("top").out / "top.txt").read_text() == "hello?"
    assert other_suffix.ran == ["top"]  # base's key does not include the suffix
    other_word = Ctx(word="bye")
    pipeline(other_word, tmp_path).get("top")
    assert other_word.ran == ["base", "top"]  # top's key includes base's key


def test_keys_cover_params_needs_code_and_files(tmp_path: Path) -> None:
    p = pipeline(Ctx(), tmp_path)
    assert p.key("top") == pipeline(Ctx(), tmp_path).key("top")
    assert p.key("top") != pipeline(Ctx(word="x"), tmp_path).key("top")
    data = tmp_path / "input.txt"
    data.write_text("one")
    steps = {"s": Step[Ctx]("s", make_base, files=(data,), tools=("sgdisk",))}
    before = Pipeline(steps, Ctx(), StepCache(tmp_path), Progress(quiet=True)).key("s")
    data.write_text("two")
    assert Pipeline(steps, Ctx(), StepCache(tmp_path), Progress(quiet=True)).key("s") != before
    inputs = Pipeline(steps, Ctx(), StepCache(tmp_path), Progress(quiet=True)).inputs("s")
    assert set(inputs["tools"]) == {"sgdisk"}  # type: ignore[arg-type]


def test_an_unknown_step_is_one_clear_error(tmp_path: Path) -> None:
    steps = {"s": Step[Ctx]("s", make_base, needs=("missing",))}
    with pytest.raises(BakeError, match="no bake step 'missing'"):
        Pipeline(steps, Ctx(), StepCache(tmp_path), Progress(quiet=True)).get("s")


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove", "extra", "record", "mode"])
def test_a_damaged_entry_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    entry = pipeline(Ctx(), tmp_path).get("base")
    target = entry.out / "base.txt"
    if damage == "truncate":
        target.write_text("hel")
    elif damage == "flip":
        target.write_text("jello")  # same size, other bytes
    elif damage == "remove":
        target.unlink()
    elif damage == "extra":
        (entry.out / "stray").write_text("x")
    elif damage == "record":
        (entry.path / "entry.json").write_text("{")
    else:
        target.chmod(0o600)
    messages: list[str] = []
    ctx = Ctx()
    again = pipeline(ctx, tmp_path, messages).get("base")
    assert ctx.ran == ["base"], "the damaged entry was used"
    assert (again.out / "base.txt").read_text() == "hello"
    assert any("damaged" in m for m in messages)
    assert pipeline(Ctx(), tmp_path).get("base").out == again.out


def test_sparse_digest_depends_on_content_only(tmp_path: Path) -> None:
    sparse, dense = tmp_path / "sparse", tmp_path / "dense"
    with open(sparse, "wb") as f:
        f.truncate(5 << 20)
        f.seek(3 << 20)
        f.write(b"data")
    content = bytearray(5 << 20)
    content[3 << 20 : (3 << 20) + 4] = b"data"
    dense.write_bytes(bytes(content))
    assert file_digest(sparse) == file_digest(dense)
    assert sha256_hex(sparse) == sha256_hex(dense)
    dense.write_bytes(bytes(content[:-1]))
    assert file_digest(sparse) != file_digest(dense)


def test_list_and_prune_keep_the_most_recently_used(tmp_path: Path) -> None:
    cache = StepCache(tmp_path)
    for n, word in enumerate(["a", "b", "c"]):
        entry = pipeline(Ctx(word=word), tmp_path).get("base")
        os.utime(entry.path / "entry.json", (1000 + n, 1000 + n))
    pipeline(Ctx(word="a"), tmp_path).get("base")  # a use makes "a" the newest
    (cache.root / ".tmp-base-999999999-dead").mkdir()  # a killed bake's leftover
    entries = cache.entries()
    assert [json.loads((e.path / "entry.json").read_text())["meta"]["length"] for e in entries] == [1, 1, 1]
    removed, freed = cache.prune(keep=1)
    assert len(removed) == 2 and freed > 0
    kept = cache.entries()
    assert len(kept) == 1 and (kept[0].out / "base.txt").read_text() == "a"
    assert not (cache.root / ".tmp-base-999999999-dead").exists()


def test_path_digest_ignores_bytecode(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")
    before = path_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    assert path_digest(tmp_path) == before
    (tmp_path / "m.py").write_text("x = 2\n")
    assert path_digest(tmp_path) != before


def test_cache_commands_list_sizes_and_prune(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bakery.cli import cli

    for word in ("a", "bb", "ccc"):
        pipeline(Ctx(word=word), tmp_path).get("top")
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "x.deb").write_bytes(b"x" * 8192)
    listed = CliRunner().invoke(cli, ["cache", "list", "--cache", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("\nbase ") == 3 and listed.output.count("\ntop ") == 3
    assert "step outputs: 6 entries" in listed.output and "debs: 1 files" in listed.output
    pruned = CliRunner().invoke(cli, ["cache", "prune", "--keep", "1", "--cache", str(tmp_path)])
    assert pruned.exit_code == 0, pruned.output
    assert "removed 4 step outputs" in pruned.output and "kept 2" in pruned.output
    assert len(StepCache(tmp_path).entries()) == 2 and (tmp_path / "debs" / "x.deb").exists()
    refused = CliRunner().invoke(cli, ["cache", "prune", "--keep", "-1", "--cache", str(tmp_path)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output


def test_two_bakes_storing_one_key_keep_the_first_entry(tmp_path: Path) -> None:
    cache = StepCache(tmp_path)

    def write(text: str) -> Callable[[Staging], None]:
        return lambda staging: (staging.out / "f").write_text(text)

    def slower(staging: Staging) -> None:
        (staging.out / "f").write_text("second")
        cache.build("s", "k", {}, write("first"))  # another bake finishes the same key meanwhile

    kept = cache.build("s", "k", {}, slower)
    assert (kept.out / "f").read_text() == "first"
    assert [e.key for e in cache.entries()] == ["k"] and not list(cache.root.glob(".tmp-*"))


def test_prefetch_downloads_in_a_few_batches_behind_one_counter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake apt-get on PATH writes each requested package; the fetcher asks it a few times, not once a file."""
    import hashlib

    from bakery.fetch import DOWNLOAD_WORKERS, Fetcher
    from bakery.lock import Lock, Pin

    bindir, calls = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    fake = bindir / "apt-get"
    fake.write_text(
        "#!/usr/bin/python3\n"
        "import sys\n"
        f"open({str(calls)!r}, 'a').write('call\\n')\n"
        "for arg in sys.argv[sys.argv.index('download') + 1:]:\n"
        "    name, version = arg.split('=')\n"
        "    open(f'{name}_{version}_amd64.deb', 'w').write(name)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    names = [f"pkg{i}" for i in range(10)]
    lock = Lock(
        debs={n: Pin("1.0", f"{n}_1.0_amd64.deb", hashlib.sha256(n.encode()).hexdigest()) for n in names}
    )
    messages: list[str] = []
    progress = Progress(quiet=True)
    progress.say = messages.append  # type: ignore[method-assign]
    cache = tmp_path / "cache"
    fetcher = Fetcher(cache, lock, locked=True, progress=progress)
    fetcher.prefetch(names)
    assert sorted(p.name for p in (cache / "debs").iterdir()) == sorted(f"{n}_1.0_amd64.deb" for n in names)
    assert len(calls.read_text().split()) == DOWNLOAD_WORKERS  # batches, not one process per file
    assert messages[0] == f"downloading 10 files in {DOWNLOAD_WORKERS} batches at once"
    assert messages[-1] == "downloaded 10/10 files"
    assert [fetcher.deb(n).name for n in names] == [
        f"{n}_1.0_amd64.deb" for n in names
    ]  # verified, no download
    assert len(calls.read_text().split()) == DOWNLOAD_WORKERS
    fetcher.prefetch(names)  # everything cached: nothing to do
    assert len(calls.read_text().split()) == DOWNLOAD_WORKERS


def test_prune_waits_for_no_bake(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bakery.cli import cli

    cache = StepCache(tmp_path)
    for word in ("a", "b"):
        pipeline(Ctx(word=word), tmp_path).get("base")
    with cache.in_use():  # a bake is running
        with pytest.raises(BakeError, match="a bake is using the cache"):
            cache.prune(keep=0)
        refused = CliRunner().invoke(cli, ["cache", "prune", "--keep", "0", "--cache", str(tmp_path)])
        assert refused.exit_code == 1 and "prune again when it has finished" in refused.output
        assert "Traceback" not in refused.output
    assert len(cache.entries()) == 2
    assert len(cache.prune(keep=0)[0]) == 2 and cache.entries() == []
