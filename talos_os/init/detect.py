"""Which platform is this node running on?

The bakery writes ``talos.platform=NAME`` into the image's command line and that always wins;
otherwise each installed platform is asked whether it recognises the machine (its guest half's
``detect``), in the plugins' ``detect_order``: an image booted somewhere it was not baked for (an
ISO on bare metal or on a VM) still finds its platform. AWS asks before Xen because older EC2
instances run on Xen; bare metal asks last and always answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from talos_os.lib.cmdline import Cmdline
from talos_os.lib.cmdline import parse as parse_cmdline
from talos_os.plugins import PlatformPlugin, discover
from talos_os.plugins.guest import Probe


@dataclass(frozen=True)
class Detected:
    """A platform name and the evidence for it (logged at boot so a wrong guess is explainable)."""

    name: str
    reason: str


class NoPlatformError(LookupError):
    """No installed platform recognised the machine."""


def normalize(name: str, plugins: dict[str, PlatformPlugin] | None = None) -> str:
    """Map an alias (``bare_metal``, ``qemu``...) to the plugin name; other names pass through."""
    key = name.strip().lower()
    for plugin in (plugins if plugins is not None else discover()).values():
        if key in plugin.aliases:
            return plugin.name
    return key


def detect_with_reason(
    root: Path | str = Path("/"),
    cmdline: Cmdline | str | None = None,
    plugins: dict[str, PlatformPlugin] | None = None,
) -> Detected:
    """Detect the platform; ``cmdline`` defaults to ``root/proc/cmdline``."""
    probe = Probe(Path(root))
    plugins = plugins if plugins is not None else discover()
    if cmdline is None:
        cmdline = probe.read("proc/cmdline")
    if isinstance(cmdline, str):
        cmdline = parse_cmdline(cmdline)
    forced = cmdline.get("talos.platform")
    if forced:
        return Detected(normalize(forced, plugins), f"talos.platform={forced} on the kernel command line")
    for plugin in sorted(plugins.values(), key=lambda p: (p.detect_order, p.name)):
        reason = plugin.guest.detect(probe)
        if reason:
            return Detected(plugin.name, reason)
    known = ", ".join(plugins) or "none installed"
    raise NoPlatformError(f"no platform recognised this machine ({known}): boot with talos.platform=NAME")


def detect(root: Path | str = Path("/"), cmdline: Cmdline | str | None = None) -> str:
    """The platform plugin name: ``aws``, ``kvm``, ``xen``, ``bare-metal`` (or what the cmdline says)."""
    return detect_with_reason(root, cmdline).name
