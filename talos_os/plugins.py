"""Platform plugins: discovered through the ``talos_os.platforms`` entry-point group.

Each plugin (``platforms/aws``, ``kvm``, ``xen``, ``bare_metal``) exposes one ``PlatformPlugin``.
The guest half (how a node finds its config) and the host half (how an image is published)
are attached by later work; the name is what the bakery writes as ``talos.platform=NAME``.
The kernel modules each platform needs are recipe data: ``bakery/recipes/kernel.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "talos_os.platforms"


@dataclass(frozen=True)
class PlatformPlugin:
    """One platform: its command-line name, a one-line description and its halves."""

    name: str
    description: str
    guest: Any = None
    host: Any = None


class UnknownPlatformError(LookupError):
    """Raised for a platform name that no installed plugin provides."""


def discover() -> dict[str, PlatformPlugin]:
    """Return every installed platform plugin by name."""
    found: dict[str, PlatformPlugin] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        plugin = ep.load()
        if not isinstance(plugin, PlatformPlugin):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a PlatformPlugin")
        found[plugin.name] = plugin
    return dict(sorted(found.items()))


def get(name: str) -> PlatformPlugin:
    """Return the plugin called ``name`` or explain which names exist."""
    plugins = discover()
    try:
        return plugins[name]
    except KeyError:
        known = ", ".join(plugins) or "none"
        raise UnknownPlatformError(f"unknown platform {name!r}: choose one of {known}") from None
