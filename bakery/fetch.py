"""Artifacts from the package registries, cached and verified by sha256 against the lock.

Debian packages come through ``apt-get download`` (the host's apt configuration; no mirror is
named here) and wheels through ``pip download`` for the image's target (cp311, manylinux
x86_64). A bake from a warm cache makes no network call.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from bakery.errors import BakeError
from bakery.lock import Lock, Pin
from bakery.progress import Progress
from bakery.tools import run, which

# Debian 12 has glibc 2.36: every manylinux tag up to it runs (pip does not expand the range itself).
_PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 37))]
WHEEL_TARGET = [
    "--only-binary=:all:",
    *(arg for plat in _PLATFORMS for arg in ("--platform", plat)),
    "--python-version", "3.11",
    "--implementation", "cp",
    "--abi", "cp311",
    "--abi", "abi3",
    "--abi", "none",
]  # fmt: skip
# Download batches run at once (one of them for the wheels): a few connections, a few process start-ups.
DOWNLOAD_WORKERS = 4


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def normalize(name: str) -> str:
    """PEP 503 name normalisation (``PyYAML`` and ``pyyaml`` are one project)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(filename: str) -> tuple[str, str]:
    """``pydantic_core-2.14.6-cp311-...whl`` -> (``pydantic-core``, ``2.14.6``)."""
    parts = filename.split("-")
    return normalize(parts[0]), parts[1]


class Fetcher:
    """Resolves recipe names to verified files in the cache, updating the lock unless locked."""

    def __init__(self, cache: Path, lock: Lock, *, locked: bool, progress: Progress) -> None:
        self.cache = cache
        self.lock = lock
        self.locked = locked
        self.progress = progress
        self.updates: list[str] = []
        (cache / "debs").mkdir(parents=True, exist_ok=True)
        (cache / "wheels").mkdir(parents=True, exist_ok=True)

    # ---- Debian packages -------------------------------------------------------------------

    def kernel_package(self, flavour: str, metapackage: str) -> str:
        """The versioned kernel package (``linux-image-6.1.0-NN-cloud-amd64``) behind a flavour."""
        pinned = self.lock.kernels.get(flavour)
        if pinned and (self.locked or self._cached(pinned)):
            return pinned
        if self.locked:
            raise BakeError(f"kernel flavour {flavour!r} is not in the lock: bake once without --locked")
        out = run(["apt-cache", "depends", "--no-recommends", "--no-suggests", metapackage], what="apt-cache")
        found = re.findall(r"Depends:\s+(linux-image-\S+)", out)
        if not found:
            raise BakeError(f"apt knows no {metapackage}: run `apt-get update` and check the apt sources")
        name: str = found[0]
        if pinned and pinned != name:
            self.updates.append(f"kernel {flavour}: {pinned} -> {name}")
        self.lock.kernels[flavour] = name
        return name

    def prefetch(self, debs: Sequence[str]) -> None:
        """Download the locked ``debs`` and wheels missing from the cache: a few batches at once, one counter.

        Each apt-get or pip process costs about a second of CPU before it downloads anything, so the
        files go in ``DOWNLOAD_WORKERS`` batches (one for the wheels) rather than one process each.
        Only fills the cache: resolving, verifying and updating the lock stay with ``deb`` and
        ``wheels``, which find the files in place and fetch (and report) any a batch missed.
        """
        missing = [
            (name, pin)
            for name in dict.fromkeys(debs)
            if (pin := self.lock.debs.get(name)) is not None
            and not _intact(self.cache / "debs" / pin.file, pin)
        ]
        wheels = [
            pin for pin in self.lock.wheels.values() if not _intact(self.cache / "wheels" / pin.file, pin)
        ]
        total = len(missing) + len(wheels)
        if not total:
            return
        deb_batches = max(1, DOWNLOAD_WORKERS - (1 if wheels else 0))
        jobs: list[tuple[int, Callable[[], object]]] = [
            (len(batch), functools.partial(self._apt_batch, batch))
            for batch in (missing[i::deb_batches] for i in range(deb_batches))
            if batch
        ]
        if wheels:
            reqs = [f"{wheel_name_version(pin.file)[0]}=={pin.version}" for pin in wheels]
            jobs.append(
                (len(wheels), functools.partial(self._pip_download, reqs, self.cache / "wheels", deps=False))
            )
        self.progress.say(f"downloading {total} files in {len(jobs)} batches at once")
        done = 0
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = {pool.submit(job): count for count, job in jobs}
            for future in as_completed(futures):
                error = future.exception()
                if error is not None and not isinstance(error, BakeError):
                    raise error
                done += futures[future]
                self.progress.say(f"downloaded {done}/{total} files")

    def _apt_batch(self, pins: list[tuple[str, Pin]]) -> None:
        """One ``apt-get download`` for several locked packages (apt fetches them over one connection)."""
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            subprocess.run(
                [which("apt-get"), "-q", "-o", "APT::Sandbox::User=root", "download",
                 *(f"{name}={pin.version}" for name, pin in pins)],
                cwd=tmp, capture_output=True, text=True, check=False,
            )  # fmt: skip
            for _name, pin in pins:
                got = Path(tmp) / pin.file
                if got.exists():
                    shutil.move(str(got), self.cache / "debs" / pin.file)

    def _cached(self, name: str) -> bool:
        pin = self.lock.debs.get(name)
        if pin is None:
            return False
        path = self.cache / "debs" / pin.file
        return path.exists() and sha256_of(path) == pin.sha256

    def deb(self, name: str) -> Path:
        """A verified .deb for ``name``: the locked version when it can be had."""
        pin = self.lock.debs.get(name)
        if pin is not None:
            path = self.cache / "debs" / pin.file
            if path.exists() and sha256_of(path) == pin.sha256:
                return path
            got = self._apt_download(name, pin.version)
            if got is not None:
                if sha256_of(got) != pin.sha256:
                    got.unlink()
                    raise BakeError(
                        f"{got.name} does not match the sha256 in the lock: the package was altered; "
                        "check the apt sources, or delete its entry from bakery/recipes/bake.lock"
                    )
                return got
            if self.locked:
                raise BakeError(
                    f"{name} {pin.version} from the lock is no longer available from apt: "
                    "bake without --locked to update the lock"
                )
        elif self.locked:
            raise BakeError(f"{name} is not in the lock: bake once without --locked to add it")
        version = self._candidate(name)
        got = self._apt_download(name, version)
        if got is None:
            raise BakeError(f"apt-get could not download {name} {version}: check the apt sources")
        new = Pin(version=version, file=got.name, sha256=sha256_of(got))
        if pin is not None:
            self.updates.append(f"{name}: {pin.version} -> {version} (the locked version is gone from apt)")
        self.lock.debs[name] = new
        return got

    def _candidate(self, name: str) -> str:
        out = run(["apt-cache", "policy", name], what="apt-cache")
        m = re.search(r"Candidate:\s*(\S+)", out)
        if not m or m.group(1) == "(none)":
            raise BakeError(f"apt knows no package {name!r}: run `apt-get update` (or `make deps`) first")
        return m.group(1)

    def _apt_download(self, name: str, version: str) -> Path | None:
        self.progress.say(f"downloading {name} {version}")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            proc = subprocess.run(
                [which("apt-get"), "-q", "-o", "APT::Sandbox::User=root", "download", f"{name}={version}"],
                cwd=tmp, capture_output=True, text=True, check=False,
            )  # fmt: skip
            files = list(Path(tmp).glob("*.deb"))
            if proc.returncode != 0 or len(files) != 1:
                return None
            final = self.cache / "debs" / files[0].name
            shutil.move(str(files[0]), final)
            return final

    # ---- wheels -----------------------------------------------------------------------------

    def wheels(self, requirements: Sequence[str]) -> list[Path]:
        """Verified wheels for ``requirements`` and their dependencies, for the image's target."""
        wanted = {normalize(r) for r in requirements}
        if wanted <= set(self.lock.wheels):
            return [self._locked_wheel(name, pin) for name, pin in sorted(self.lock.wheels.items())]
        if self.locked:
            missing = ", ".join(sorted(wanted - set(self.lock.wheels)))
            raise BakeError(f"wheels {missing} are not in the lock: bake once without --locked to add them")
        return self._resolve_wheels(sorted(wanted))

    def _locked_wheel(self, name: str, pin: Pin) -> Path:
        path = self.cache / "wheels" / pin.file
        if not (path.exists() and sha256_of(path) == pin.sha256):
            self.progress.say(f"downloading wheel {name} {pin.version}")
            self._pip_download([f"{name}=={pin.version}"], self.cache / "wheels", deps=False)
            if not path.exists() or sha256_of(path) != pin.sha256:
                raise BakeError(f"wheel {pin.file} does not match the lock: delete its entry and bake again")
        return path

    def _resolve_wheels(self, names: list[str]) -> list[Path]:
        """Resolve with pip for the target, pinning our direct dependencies to the tested versions."""
        reqs = []
        for name in names:
            try:
                reqs.append(f"{name}=={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                reqs.append(name)
        self.progress.say(f"resolving wheels: {' '.join(reqs)}")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            self._pip_download(reqs, Path(tmp), deps=True)
            paths = []
            old = dict(self.lock.wheels)
            self.lock.wheels.clear()
            for f in sorted(Path(tmp).glob("*.whl")):
                name, version = wheel_name_version(f.name)
                final = self.cache / "wheels" / f.name
                shutil.move(str(f), final)
                self.lock.wheels[name] = Pin(version=version, file=f.name, sha256=sha256_of(final))
                if name in old and old[name].version != version:
                    self.updates.append(f"wheel {name}: {old[name].version} -> {version}")
                paths.append(final)
        return paths

    def _pip_download(self, reqs: list[str], dest: Path, *, deps: bool) -> None:
        argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", *WHEEL_TARGET]
        argv += ["--no-deps"] if not deps else []
        proc = subprocess.run([*argv, "-d", str(dest), *reqs], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])
            raise BakeError(f"pip could not download {' '.join(reqs)}: {tail}")


def _intact(path: Path, pin: Pin) -> bool:
    """The cached file is there and matches its pin."""
    return path.exists() and sha256_of(path) == pin.sha256
