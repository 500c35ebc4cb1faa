"""Stage 2 kernel modules: what Kubernetes networking needs, loaded by name through modules.dep.

Stage 1 loaded the boot modules (disks, network cards) from the initramfs; these come from the
root filesystem, where the bakery put the files, ``modules.dep`` and the list of names.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from talos_os.kmod import ModuleError, ModuleIndex

NAMES_FILE = Path("/etc/talos/modules.rootfs")  # written by the bakery, one name per line
LATE_MODULES_ENV = "TALOS_LATE_MODULES"  # set by stage 1 (talos_os.init.stage1)


@dataclass
class LoadReport:
    """What happened to each module, for one console line."""

    loaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # already loaded (by stage 1 or a dependency)
    failed: list[tuple[str, str]] = field(default_factory=list)
    no_device: list[str] = field(default_factory=list)  # drivers for hardware this machine lacks (ENODEV)


def read_names(path: Path = NAMES_FILE) -> list[str]:
    """Module names from the bakery's list (comments and blank lines ignored)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [w for line in text.splitlines() if (w := line.split("#", 1)[0].strip())]


def late_names(env: Mapping[str, str] = os.environ) -> list[str]:
    """Boot modules stage 1 loaded from the root rather than the initramfs (``TALOS_LATE_MODULES``).

    Stage 2 loads them again: those in are reported present, one that failed is retried and named."""
    return env.get(LATE_MODULES_ENV, "").split()


def loaded_modules(proc_modules: Path = Path("/proc/modules")) -> set[str]:
    """Names of the modules the kernel has now."""
    try:
        return {line.split(" ", 1)[0] for line in proc_modules.read_text().splitlines() if line}
    except OSError:
        return set()


def load(
    names: Iterable[str],
    moddir: Path,
    finit: Callable[[str], bool],
    already: set[str] | None = None,
) -> LoadReport:
    """Load ``names`` and their dependencies in order; one failure does not stop the others."""
    report = LoadReport()
    index = ModuleIndex.load(moddir)
    already = set(already or ())
    for name in names:
        try:
            order = index.closure([name])
        except ModuleError as exc:
            report.failed.append((name, str(exc)))
            continue
        for mod in order:
            if mod in already:
                if mod == name:
                    report.present.append(mod)
                continue
            try:
                if finit(str(moddir / index.paths[mod])):
                    report.loaded.append(mod)
                else:
                    report.present.append(mod)
                already.add(mod)
            except OSError as exc:
                if exc.errno == errno.ENODEV:  # e.g. xen-netfront outside Xen: nothing to drive, no fault
                    report.no_device.append(mod)
                    already.add(mod)
                    continue
                report.failed.append((mod, exc.strerror or str(exc)))
                break  # the rest of this closure depends on it
    return report


def module_dir(release: str | None = None) -> Path:
    """``/usr/lib/modules/<running kernel>``."""
    return Path("/usr/lib/modules") / (release or os.uname().release)
