"""The bake as a pipeline of cached steps (osbuild's idea: a stage is named by the hash of its inputs).

A step's key is the sha256 of exactly what it depends on: its parameters (recipe entries, locked
artifact hashes, options that reach it), the source of the code it runs, the host tools it calls,
other input files, and the keys of the steps whose outputs it reads. Keys are known before anything
runs, so a bake asks for its last step and runs only the steps whose output is not cached (and
what those need), each at most once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from bakery.errors import BakeError
from bakery.fetch import sha256_of
from bakery.progress import Progress
from bakery.stepcache import Entry, Staging, StepCache
from bakery.tools import which

C = TypeVar("C")
# Bumped when the meaning of a key changes (the cache layout, how inputs are hashed).
KEY_FORMAT = 1
_SKIP = ("__pycache__", ".pyc", ".pyo")
SOURCE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step(Generic[C]):
    """One bake step: how it makes its output and everything its output depends on.

    ``make(ctx, staging, inputs)`` writes into ``staging.out`` (scratch space: ``staging.work``;
    figures for the manifest: ``staging.meta``); ``inputs`` are the entries of the ``needs``
    steps. ``params(ctx)`` returns the JSON-able recipe entries, pins and options that reach the
    step; ``code`` names modules or packages whose source it runs; ``tools`` the host programs it
    calls; ``files`` other files or directories it reads.
    """

    name: str
    make: Callable[[C, Staging, Mapping[str, Entry]], None]
    needs: tuple[str, ...] = ()
    params: Callable[[C], object] = lambda _ctx: None
    code: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    fetches: bool = False  # reads downloaded artifacts: the bake fetches them before it runs


@functools.cache
def code_digest(module: str) -> str:
    """sha256 of a module's source file, or of every file of a package."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise BakeError(f"bake step code {module!r} cannot be found: fix the step's code list")
    if spec.submodule_search_locations:
        return path_digest(Path(next(iter(spec.submodule_search_locations))))
    if spec.origin is None:
        raise BakeError(f"bake step code {module!r} has no source file")
    return sha256_of(Path(spec.origin))


@functools.cache
def tool_digest(tool: str) -> str:
    """sha256 of the host program a step runs (an upgraded mksquashfs may write other bytes)."""
    return sha256_of(Path(os.path.realpath(which(tool))))


def path_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, bytecode caches left out)."""
    if path.is_file():
        return sha256_of(path)
    if not path.is_dir():
        raise BakeError(f"bake input {path} is missing")
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP)
        for name in sorted(filenames):
            if name.endswith(_SKIP):
                continue
            full = Path(dirpath, name)
            rel = full.relative_to(path).as_posix()
            h.update(f"{rel}\0{os.readlink(full) if full.is_symlink() else sha256_of(full)}\0".encode())
    return h.hexdigest()


def _label(path: Path) -> str:
    """A file's name in a key: relative to the checkout, so two checkouts of one tree share their keys."""
    try:
        return path.resolve().relative_to(SOURCE_ROOT).as_posix()
    except ValueError:
        return str(path)


class Pipeline(Generic[C]):
    """Resolves steps on demand: cached output when its key is stored, else runs the step once."""

    def __init__(
        self,
        steps: Mapping[str, Step[C]],
        ctx: C,
        cache: StepCache,
        progress: Progress,
        before_run: Callable[[Step[C]], None] = lambda _step: None,
    ) -> None:
        self.steps = steps
        self.ctx = ctx
        self.cache = cache
        self.progress = progress
        self.before_run = before_run
        self._keys: dict[str, str] = {}
        self._entries: dict[str, Entry] = {}
        self.report: dict[str, dict[str, object]] = {}  # step -> key, cached, seconds (for the manifest)

    def step(self, name: str) -> Step[C]:
        if name not in self.steps:
            raise BakeError(f"no bake step {name!r} is registered (known: {', '.join(sorted(self.steps))})")
        return self.steps[name]

    def inputs(self, name: str) -> dict[str, object]:
        """Everything the key of ``name`` is made of (kept in the cache entry, to see why keys differ)."""
        step = self.step(name)
        return {
            "format": KEY_FORMAT,
            "step": name,
            "params": step.params(self.ctx),
            "needs": {n: self.key(n) for n in step.needs},
            "code": {m: code_digest(m) for m in step.code},
            "tools": {t: tool_digest(t) for t in step.tools},
            "files": {_label(f): path_digest(f) for f in step.files},
        }

    def key(self, name: str) -> str:
        """The step's key (its inputs' hash), computed without running anything."""
        if name not in self._keys:
            blob = json.dumps(self.inputs(name), sort_keys=True, separators=(",", ":"), default=str)
            self._keys[name] = hashlib.sha256(blob.encode()).hexdigest()
        return self._keys[name]

    def record(self, *targets: str) -> dict[str, dict[str, object]]:
        """Every step behind ``targets`` with its key and whether it ran (a step skipped because a later
        step's output was cached counts as cached): what the manifest keeps."""
        names: dict[str, None] = {}

        def visit(name: str) -> None:
            for need in self.step(name).needs:
                visit(need)
            names.setdefault(name)

        for target in targets:
            visit(target)
        return {name: {"key": self.key(name), "cached": True, **self.report.get(name, {})} for name in names}

    def get(self, name: str) -> Entry:
        """The step's output: from the cache when its key is there (and intact), else made now."""
        if name in self._entries:
            return self._entries[name]
        step, key = self.step(name), self.key(name)
        entry = self.cache.lookup(
            name,
            key,
            on_damage=lambda why: self.progress.say(f"{name}: cached output is damaged ({why}); rebuilding"),
        )
        if entry is not None:
            self.progress.say(f"{name}: cached ({key[:12]})")
            self.report[name] = {"key": key, "cached": True}
        else:
            needed = {n: self.get(n) for n in step.needs}
            self.before_run(step)
            started = time.monotonic()
            with self.progress.step(name):
                entry = self.cache.build(
                    name, key, self.inputs(name), lambda staging: step.make(self.ctx, staging, needed)
                )
            self.report[name] = {"key": key, "cached": False, "seconds": round(time.monotonic() - started, 2)}
        self._entries[name] = entry
        return entry
