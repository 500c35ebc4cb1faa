"""Recipes: the data in bakery/recipes/*.yaml, as typed objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bakery.errors import BakeError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class Flavour:
    """A kernel flavour: the Debian metapackage that names it."""

    name: str
    package: str
    description: str


@dataclass(frozen=True)
class PlatformModules:
    """Modules one platform needs (required) or can use when the flavour has them (optional);
    ``all_drivers``: the platform can be any machine, so its boots load every platform's modules."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    all_drivers: bool = False


@dataclass(frozen=True)
class KernelRecipe:
    """Which kernel, and which modules go in the initramfs and the root filesystem."""

    flavours: dict[str, Flavour]
    default_flavour: str
    boot_modules: tuple[str, ...]
    platforms: dict[str, PlatformModules]
    rootfs_modules: tuple[str, ...]

    def flavour(self, name: str | None) -> Flavour:
        name = name or self.default_flavour
        if name not in self.flavours:
            raise BakeError(f"unknown kernel flavour {name!r}: choose one of {', '.join(self.flavours)}")
        return self.flavours[name]


@dataclass(frozen=True)
class RootfsRecipe:
    """Debian packages, wheels, kept executables and removals for the root filesystem."""

    python: str
    debs: tuple[str, ...]
    wheels: tuple[str, ...]
    keep_executables: tuple[str, ...]
    remove: tuple[str, ...]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BakeError(f"cannot read recipe {path}: {exc}") from None
    if not isinstance(data, dict):
        raise BakeError(f"recipe {path} must be a YAML mapping")
    return data


def load_kernel(path: Path = RECIPES_DIR / "kernel.yaml") -> KernelRecipe:
    """Load the kernel recipe."""
    d = _read(path)
    return KernelRecipe(
        flavours={
            name: Flavour(name=name, package=f["package"], description=f.get("description", ""))
            for name, f in d["flavours"].items()
        },
        default_flavour=d["default_flavour"],
        boot_modules=tuple(d["boot_modules"]),
        platforms={
            name: PlatformModules(
                tuple(p.get("required", ())), tuple(p.get("optional", ())), bool(p.get("all_drivers", False))
            )
            for name, p in d["platforms"].items()
        },
        rootfs_modules=tuple(d["rootfs_modules"]),
    )


def load_rootfs(path: Path = RECIPES_DIR / "rootfs.yaml") -> RootfsRecipe:
    """Load the root filesystem recipe."""
    d = _read(path)
    return RootfsRecipe(
        python=d["python"],
        debs=tuple(d["debs"]),
        wheels=tuple(d["wheels"]),
        keep_executables=tuple(d["keep_executables"]),
        remove=tuple(d["remove"]),
    )
