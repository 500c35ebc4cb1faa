"""Kernel module dependency resolution from ``modules.dep``.

Shared by the bakery (which picks the modules an initramfs carries) and by the init (which
loads them in dependency order with ``finit_module``, no external tool). Standard library only:
this module ships inside the initramfs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class ModuleError(LookupError):
    """A module that is neither in modules.dep nor built into the kernel."""


def canonical(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike (``xen-blkfront`` is ``xen_blkfront``)."""
    return name.replace("-", "_")


def name_of(path: str) -> str:
    """``kernel/drivers/net/virtio_net.ko`` (maybe compressed) -> ``virtio_net``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(suffix):
            return canonical(base[: -len(suffix)])
    return canonical(base)


@dataclass(frozen=True)
class ModuleIndex:
    """What ``modules.dep`` and ``modules.builtin`` say about one kernel."""

    paths: dict[str, str]  # canonical name -> path relative to /lib/modules/<version>
    deps: dict[str, tuple[str, ...]]  # canonical name -> direct dependencies (canonical names)
    builtin: frozenset[str]

    @classmethod
    def parse(cls, modules_dep: str, modules_builtin: str = "") -> ModuleIndex:
        """Parse the text of ``modules.dep`` (and optionally ``modules.builtin``)."""
        paths: dict[str, str] = {}
        deps: dict[str, tuple[str, ...]] = {}
        for line in modules_dep.splitlines():
            if ":" not in line:
                continue
            path, _, rest = line.partition(":")
            name = name_of(path.strip())
            paths[name] = path.strip()
            deps[name] = tuple(name_of(d) for d in rest.split())
        builtin = frozenset(name_of(p) for p in modules_builtin.split())
        return cls(paths=paths, deps=deps, builtin=builtin)

    @classmethod
    def load(cls, moddir: Path) -> ModuleIndex:
        """Read the index of ``/lib/modules/<version>`` (or a copy of it)."""
        builtin = moddir / "modules.builtin"
        return cls.parse(
            (moddir / "modules.dep").read_text(),
            builtin.read_text() if builtin.exists() else "",
        )

    def has(self, name: str) -> bool:
        """True when the module exists as a file or is built into the kernel."""
        name = canonical(name)
        return name in self.paths or name in self.builtin

    def closure(self, names: Iterable[str]) -> list[str]:
        """Every module needed to load ``names``, dependencies first, each once.

        Built-in modules need no loading and are left out; an unknown name raises ModuleError.
        """
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            name = canonical(name)
            if name in seen or (name in self.builtin and name not in self.paths):
                return
            if name not in self.paths:
                via = f" (needed by {chain[-1]})" if chain else ""
                raise ModuleError(f"kernel module {name!r}{via} is not in this kernel's modules.dep")
            if name in chain:  # modules.dep has no cycles; guard anyway
                return
            for dep in self.deps.get(name, ()):
                visit(dep, (*chain, name))
            seen.add(name)
            order.append(name)

        for n in names:
            visit(n, ())
        return order
