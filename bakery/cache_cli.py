"""``talos-bake cache list|prune``: what the bake cache holds and how big it is, and making room.

Step outputs are kept per key, so every changed input adds an entry; ``prune --keep N`` keeps the
N most recently used entries of each step (the ones current bakes hit) and deletes the rest,
with what a killed bake left behind. Downloads (debs, wheels) are listed, never pruned: the lock
names them and a bake would fetch them again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from bakery.errors import BakeError
from bakery.options import default_cache
from bakery.stepcache import StepCache, allocated_bytes
from talos_os import output as out_fmt

DEFAULT_KEEP = 2


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


cache_option = click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_cache(),
    envvar="TALOS_BAKE_CACHE",
    show_default=True,
    help="The bake cache (downloads and step outputs).",
)


@click.group("cache")
def cache_group() -> None:
    """List or prune the bake cache (step outputs and downloads)."""


@cache_group.command("list", epilog="Example: talos-bake cache list -o json")
@cache_option
@out_fmt.output_option()
def list_entries(cache: Path, output: str) -> None:
    """Each step output with its key, size and last use; then the totals."""
    entries = sorted(StepCache(cache).entries(), key=lambda e: (e.step, -e.used))
    lines = [f"{'STEP':<12} {'KEY':<16} {'SIZE':>12}  LAST USED (UTC)"] if entries else []
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.used))
        lines.append(f"{e.step:<12} {e.key[:16]:<16} {_mib(e.size):>12}  {used}")
    steps_total = sum(e.size for e in entries)
    lines.append(f"step outputs: {len(entries)} entries, {_mib(steps_total)}")
    downloads: dict[str, dict[str, int]] = {}
    for kind in ("debs", "wheels"):
        folder = cache / kind
        count = len(list(folder.iterdir())) if folder.is_dir() else 0
        size = allocated_bytes(folder) if folder.is_dir() else 0
        downloads[kind] = {"files": count, "bytes": size}
        lines.append(f"{kind}: {count} files, {_mib(size)}")
    record = {
        "cache": cache.resolve(),
        "steps": [
            {"step": e.step, "key": e.key, "size_bytes": e.size, "last_used": out_fmt.iso_time(e.used)}
            for e in entries
        ],
        "step_bytes": steps_total,
        "downloads": downloads,
    }
    out_fmt.echo(output, record, lines)


@cache_group.command("prune", epilog="Example: talos-bake cache prune --keep 1")
@click.option("--keep", type=click.IntRange(min=0), default=DEFAULT_KEEP, show_default=True,
              help="Step outputs to keep per step, most recently used first.")  # fmt: skip
@cache_option
@out_fmt.output_option()
def prune(keep: int, cache: Path, output: str) -> None:
    """Delete all but the KEEP most recently used outputs of each step, and leftovers of killed bakes."""
    store = StepCache(cache)
    try:
        removed, freed = store.prune(keep)
    except BakeError as exc:
        raise click.ClickException(str(exc)) from None
    kept = store.entries()
    kept_bytes = sum(e.size for e in kept)
    record: dict[str, Any] = {
        "cache": cache.resolve(),
        "removed": [{"step": e.step, "key": e.key, "size_bytes": e.size} for e in removed],
        "freed_bytes": freed,
        "kept": len(kept),
        "kept_bytes": kept_bytes,
    }
    text = f"removed {len(removed)} step outputs, freed {_mib(freed)}; kept {len(kept)} ({_mib(kept_bytes)})"
    out_fmt.echo(output, record, text)
