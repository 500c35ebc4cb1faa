"""The step cache: each bake step's output, kept under the hash of exactly its inputs.

Layout: ``<cache>/steps/<step>/<key>/`` holds ``out/`` (what the step made) and ``entry.json``
(the digest, mode and size of everything in ``out/``, the step's figures, the inputs behind the
key). An entry is checked against its digests every time it is used, so a truncated or altered
file is found, the entry deleted and the step run again: a damaged entry is never used. Entries
appear by one rename of a finished directory, so an interrupted step leaves only a ``.tmp-*``
directory, which ``prune`` removes once its process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery.errors import BakeError
from talos_os.install.sparse import data_extents

STEPS_DIR = "steps"
ENTRY = "entry.json"
LOCK = ".lock"  # bakes hold it shared while they use entries; prune needs it alone
OUT = "out"
BLOCK = 1 << 20
_ZERO_BLOCK = hashlib.sha256(bytes(BLOCK)).digest()


def file_digest(path: Path) -> str:
    """sha256 over the sha256 of each 1 MiB block, holes taken as zeros without reading them.

    The same bytes give the same digest however sparse the file is, and a 2 GiB disk image
    holding 300 MiB of data costs 300 MiB of reading, not 2 GiB.
    """
    outer = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        with_data: set[int] = set()
        for start, end in data_extents(f.fileno(), size):
            with_data.update(range(start // BLOCK, (end - 1) // BLOCK + 1))
        for index in range(-(-size // BLOCK)):
            length = min(BLOCK, size - index * BLOCK)
            if index in with_data:
                f.seek(index * BLOCK)
                outer.update(hashlib.sha256(f.read(length)).digest())
            else:
                outer.update(_ZERO_BLOCK if length == BLOCK else hashlib.sha256(bytes(length)).digest())
    return outer.hexdigest()


def describe(root: Path) -> dict[str, list[Any]]:
    """Every path under ``root``: kind, mode, size and digest (files) or target (symlinks)."""
    found: dict[str, list[Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ["link", os.readlink(path)]
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ["dir", mode]
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ["file", mode, st.st_size, file_digest(path)]
            else:
                found[rel] = ["other", mode]
    return found


def allocated_bytes(root: Path) -> int:
    """Disk space used under ``root`` (sparse files count what they hold, not their length)."""
    total = 0
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            total += os.lstat(Path(dirpath, name)).st_blocks * 512
    return total


@dataclass(frozen=True)
class Entry:
    """One cached step output."""

    step: str
    key: str
    path: Path
    meta: dict[str, Any]
    size: int
    used: float

    @property
    def out(self) -> Path:
        """The directory holding what the step made."""
        return self.path / OUT


@dataclass
class Staging:
    """Where a running step writes its output (``out``), scratch space (``work``) and figures (``meta``)."""

    out: Path
    work: Path
    meta: dict[str, Any] = field(default_factory=dict)


class StepCache:
    """Step outputs by (step, key) under ``<cache>/steps``."""

    def __init__(self, cache: Path) -> None:
        self.root = cache / STEPS_DIR

    def lookup(
        self, step: str, key: str, on_damage: Callable[[str], None] = lambda _why: None
    ) -> Entry | None:
        """The verified entry for ``key``, or None; a damaged entry is reported, deleted and not returned."""
        path = self.root / step / key
        if not path.is_dir():
            return None
        try:
            record = json.loads((path / ENTRY).read_text())
            expected = record["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self._discard(path)
            on_damage("its record is missing or unreadable")
            return None
        actual = describe(path / OUT)
        if actual != expected:
            self._discard(path)
            on_damage(_difference(expected, actual))
            return None
        os.utime(path / ENTRY)  # last use, for prune
        return Entry(step, key, path, dict(record.get("meta", {})), int(record.get("size", 0)), time.time())

    def build(self, step: str, key: str, inputs: Mapping[str, Any], make: Callable[[Staging], None]) -> Entry:
        """Run ``make`` into a fresh staging directory and keep its output under ``key``."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{step}-{os.getpid()}-{secrets.token_hex(4)}"
        staging = Staging(out=tmp / OUT, work=tmp / "work")
        staging.out.mkdir(parents=True)
        staging.work.mkdir()
        try:
            make(staging)
            shutil.rmtree(staging.work)
            size = allocated_bytes(staging.out)
            record = {
                "step": step,
                "key": key,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "size": size,
                "meta": staging.meta,
                "inputs": inputs,
                "files": describe(staging.out),
            }
            (tmp / ENTRY).write_text(json.dumps(record, indent=1, default=str))
            final = self.root / step / key
            final.parent.mkdir(exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:  # another bake stored this key meanwhile: use its entry, left as it is
                existing = self.lookup(step, key)
                if existing is not None:
                    return existing
                os.rename(tmp, final)  # it was damaged (and is gone now)
            return Entry(step, key, final, staging.meta, size, time.time())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def discard(self, step: str, key: str) -> None:
        """Delete one entry, if it is there."""
        path = self.root / step / key
        if path.is_dir():
            self._discard(path)

    def entries(self) -> list[Entry]:
        """Every entry (unverified), newest use first."""
        found = []
        for path in self.root.glob("*/*"):
            if not path.is_dir() or path.parent.name.startswith("."):
                continue
            try:
                record = json.loads((path / ENTRY).read_text())
                used = (path / ENTRY).stat().st_mtime
            except (OSError, ValueError):
                record, used = {}, 0.0
            found.append(
                Entry(
                    path.parent.name,
                    path.name,
                    path,
                    dict(record.get("meta", {})),
                    int(record.get("size", 0)),
                    used,
                )
            )
        return sorted(found, key=lambda e: e.used, reverse=True)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held by a bake while it reads and writes entries, so that no prune deletes them under it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            yield

    def prune(self, keep: int) -> tuple[list[Entry], int]:
        """Keep the ``keep`` most recently used entries of each step; delete the rest and dead bakes' leftovers.

        Returns the deleted entries and the bytes freed (leftovers included). Refused while a bake runs.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BakeError(
                    f"a bake is using the cache in {self.root.parent}: prune again when it has finished"
                ) from None
            return self._prune(keep)

    def _prune(self, keep: int) -> tuple[list[Entry], int]:
        removed: list[Entry] = []
        freed = 0
        per_step: dict[str, int] = {}
        for entry in self.entries():
            per_step[entry.step] = per_step.get(entry.step, 0) + 1
            if per_step[entry.step] > keep:
                freed += entry.size or allocated_bytes(entry.path)
                self._discard(entry.path)
                removed.append(entry)
        for tmp in self._leftovers():
            freed += allocated_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        return removed, freed

    def _leftovers(self) -> Iterator[Path]:
        """Staging and trash directories of bakes that are no longer running."""
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            if path.name.startswith((".tmp-", ".trash-")):
                pid = path.name.split("-")[-2]
                if not (pid.isdigit() and _alive(int(pid))):
                    yield path

    def _discard(self, path: Path) -> None:
        """Remove an entry: first out of the way by rename (so it is never half-seen), then deleted."""
        trash = self.root / f".trash-{path.parent.name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _difference(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    """A short reason an entry failed verification."""
    missing = sorted(set(expected) - set(actual))
    if missing:
        return f"{missing[0]} is missing"
    extra = sorted(set(actual) - set(expected))
    if extra:
        return f"{extra[0]} should not be there"
    changed = next(p for p in sorted(expected) if expected[p] != actual[p])
    if (
        expected[changed][0] == "file"
        and actual[changed][0] == "file"
        and expected[changed][2] != actual[changed][2]
    ):
        return f"{changed} has the wrong size"
    return f"{changed} has the wrong content"
