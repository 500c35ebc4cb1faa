"""``talos-bake cache list|prune``: what the bake cache holds and how big it is, and making room.

Step outputs are kept per key, so every changed input adds an entry; ``prune --keep N`` keeps the
N most recently used entries of each step (the ones current bakes hit) and deletes the rest,
with what a killed bake left behind. Downloads (debs, wheels) are listed, never pruned: the lock
names them and a bake would fetch them again.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from bakery.errors import BakeError
from bakery.options import default_cache
from bakery.stepcache import StepCache, allocated_bytes

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


@cache_group.command("list", epilog="Example: talos-bake cache list")
@cache_option
def list_entries(cache: Path) -> None:
    """Each step output with its key, size and last use; then the totals."""
    entries = StepCache(cache).entries()
    if entries:
        click.echo(f"{'STEP':<12} {'KEY':<16} {'SIZE':>12}  LAST USED (UTC)")
    for e in sorted(entries, key=lambda e: (e.step, -e.used)):
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.used))
        click.echo(f"{e.step:<12} {e.key[:16]:<16} {_mib(e.size):>12}  {used}")
    steps_total = sum(e.size for e in entries)
    click.echo(f"step outputs: {len(entries)} entries, {_mib(steps_total)}")
    for kind in ("debs", "wheels"):
        folder = cache / kind
        count = len(list(folder.iterdir())) if folder.is_dir() else 0
        click.echo(f"{kind}: {count} files, {_mib(allocated_bytes(folder) if folder.is_dir() else 0)}")


@cache_group.command("prune", epilog="Example: talos-bake cache prune --keep 1")
@click.option("--keep", type=click.IntRange(min=0), default=DEFAULT_KEEP, show_default=True,
              help="Step outputs to keep per step, most recently used first.")  # fmt: skip
@cache_option
def prune(keep: int, cache: Path) -> None:
    """Delete all but the KEEP most recently used outputs of each step, and leftovers of killed bakes."""
    store = StepCache(cache)
    try:
        removed, freed = store.prune(keep)
    except BakeError as exc:
        raise click.ClickException(str(exc)) from None
    kept = store.entries()
    click.echo(
        f"removed {len(removed)} step outputs, freed {_mib(freed)}; "
        f"kept {len(kept)} ({_mib(sum(e.size for e in kept))})"
    )
