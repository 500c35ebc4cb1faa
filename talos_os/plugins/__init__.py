"""Platform plugins: the one seam between the OS and the places it runs.

A platform is one package under ``platforms/`` with a ``PLUGIN`` registered in the
``talos_os.platforms`` entry-point group; platform names exist nowhere else. A plugin has two halves:

- the **guest** half runs on the node: it recognises its platform (``detect``), then finds the
  machine config and the hostname there (the :class:`~talos_os.plugins.guest.Guest` protocol);
- the **host** half runs on the operator's machine: the module named by ``host`` adds the platform's
  ``talos-bake`` commands (publishing) with ``register(group)``, as osctl's command groups do. It is
  imported only on the host, so the node never loads click or the bakery.

The kernel modules each platform needs are recipe data: ``bakery/recipes/kernel.yaml``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    import click

    from talos_os.plugins.guest import Guest

ENTRY_POINT_GROUP = "talos_os.platforms"


class HostHalf(Protocol):
    """A platform's host half: a module that adds its commands to ``talos-bake``."""

    def register(self, group: click.Group) -> None: ...


@dataclass(frozen=True)
class PlatformPlugin:
    """One platform: its command-line name, a one-line description and its two halves."""

    name: str
    description: str
    guest: Guest
    host: str | None = None  # module path of the host half, imported on the host only
    aliases: tuple[str, ...] = ()  # other spellings accepted in talos.platform=
    detect_order: int = 50  # lower is asked first; the fallback platform asks last

    def load_host(self) -> HostHalf | None:
        """The host half's module, or None for a platform with nothing to publish."""
        if self.host is None:
            return None
        return cast("HostHalf", importlib.import_module(self.host))


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


def names() -> list[str]:
    """The installed platforms' names, sorted: what ``--platform`` accepts."""
    return list(discover())


def get(name: str, plugins: dict[str, PlatformPlugin] | None = None) -> PlatformPlugin:
    """Return the plugin called ``name`` (among ``plugins``, default: discovered) or explain which names exist."""
    plugins = plugins if plugins is not None else discover()
    try:
        return plugins[name]
    except KeyError:
        known = ", ".join(plugins) or "none"
        raise UnknownPlatformError(f"unknown platform {name!r}: choose one of {known}") from None
