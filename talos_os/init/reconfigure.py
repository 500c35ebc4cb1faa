"""A new machine config for a running node (``osctl apply-config``): what changed, whether it can
apply live, and doing it.

Live (no reboot): ``machine.sysctls`` set or changed, ``machine.files`` and all of
``machine.network`` (the network manager is re-run with the new settings: addresses, routes,
MTUs, DHCP or static, nameservers, hostname). Everything else (certificates, Kubernetes, install,
env, a removed sysctl, whose kernel value stays until a reboot) takes effect at the next boot. The modes are talosctl's:
``auto`` applies live when it can and reboots otherwise, ``no-reboot`` refuses a change that needs a
reboot, ``reboot`` saves and reboots, ``staged`` saves for the next boot. A config of another
cluster (another OS CA or Kubernetes CA) is refused. The config is saved on EPHEMERAL
(:data:`SAVED`), which the config phase reads before any platform source.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talos_os.config import MachineConfig
from talos_os.init.nodestate import STATE_DIR
from talos_os.lib.control import BAD_REQUEST, INVALID, ControlError

if TYPE_CHECKING:
    from talos_os.config.model import MachineNetwork
    from talos_os.init.network import NetworkState

SAVED = STATE_DIR / "config.yaml"
MODES = ("auto", "no-reboot", "reboot", "staged")
LIVE_PREFIXES = ("machine.sysctls.", "machine.files", "machine.network.")
LIVE_DHCP_WAIT = 10.0  # a link switched to DHCP gets this long for a lease before the reply (then it goes on)
_MISSING = object()


class ReconfigureError(Exception):
    """The new config cannot be applied as asked; one sentence for the operator."""


@dataclass(frozen=True)
class Change:
    """One path whose value differs, and whether it can be applied without a reboot."""

    path: str
    live: bool


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):  # an empty mapping has no leaves: {} and a missing key are alike
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def flatten(cfg: MachineConfig) -> dict[str, Any]:
    """``path -> value`` of every leaf (lists are leaves) of the config as YAML names it."""
    out: dict[str, Any] = {}
    _flatten(cfg.model_dump(mode="json", by_alias=True), "", out)
    return out


def is_live(path: str, removed: bool) -> bool:
    """Whether a change at ``path`` applies without a reboot (a removed sysctl does not)."""
    if path.startswith("machine.sysctls.") and removed:
        return False
    return path.startswith(LIVE_PREFIXES)


def changes(old: MachineConfig, new: MachineConfig) -> list[Change]:
    """Every path that differs between the configs, sorted, each marked live or not."""
    a, b = flatten(old), flatten(new)
    found = []
    for path in sorted(set(a) | set(b)):
        if a.get(path, _MISSING) != b.get(path, _MISSING):
            found.append(Change(path, is_live(path, removed=path not in b)))
    return found


def same_cluster(old: MachineConfig, new: MachineConfig) -> None:
    """Refuse a config whose OS CA or Kubernetes CA is not this node's."""
    if old.machine.ca.crt_pem != new.machine.ca.crt_pem:
        raise ReconfigureError(
            "the config belongs to another cluster: its machine.ca (the OS CA) is not this node's; "
            "generate it from this cluster's secrets"
        )
    if old.cluster.ca.crt_pem != new.cluster.ca.crt_pem:
        raise ReconfigureError(
            "the config belongs to another cluster: its cluster.ca (the Kubernetes CA) is not this node's; "
            "generate it from this cluster's secrets"
        )


def plan(found: list[Change], mode: str) -> str:
    """What to do: ``none``, ``live``, ``reboot`` or ``staged`` (ReconfigureError for no-reboot
    with a change that needs a reboot)."""
    if mode not in MODES:
        raise ReconfigureError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if not found:
        return "none"
    needs_reboot = [c.path for c in found if not c.live]
    if mode == "staged":
        return "staged"
    if mode == "reboot":
        return "reboot"
    if needs_reboot and mode == "no-reboot":
        shown = ", ".join(needs_reboot[:5]) + (" ..." if len(needs_reboot) > 5 else "")
        raise ReconfigureError(
            f"{shown} cannot change without a reboot: use --mode reboot, or --mode staged for the next boot"
        )
    return "reboot" if needs_reboot else "live"


MESSAGES = {
    "none": "nothing changed: the node already runs this config",
    "live": "applied without a reboot",
    "reboot": "saved; the node reboots into it now",
    "staged": "saved; it takes effect at the next boot",
}


@dataclass
class Effects:
    """What applying does on the node; the init passes the real functions, tests record calls."""

    save: Callable[[bytes], object]  # persist (EPHEMERAL) for the next boots
    publish: Callable[[bytes], object]  # the running config osd reads (/run/talos/config.yaml)
    apply_live: Callable[[MachineConfig], list[str]]  # sysctls, files, hostname; returns what it did
    reboot: Callable[[], None]  # requests the reboot (after the reply)
    notes: list[str] = field(default_factory=list)


def apply(
    current: MachineConfig, new: MachineConfig, data: bytes, mode: str, dry_run: bool, effects: Effects
) -> dict[str, Any]:
    """Check, diff, plan and (unless ``dry_run``) carry out; the reply for osctl."""
    same_cluster(current, new)
    found = changes(current, new)
    action = plan(found, mode)
    done: list[str] = []
    if not dry_run and action != "none":
        effects.save(data)
        if action == "live":
            effects.publish(data)
            done = effects.apply_live(new)
        elif action == "reboot":
            effects.publish(data)
            effects.reboot()
    prefix = "dry run: would be " if dry_run and action != "none" else ""
    message = MESSAGES[action]
    if prefix:
        message = prefix + {"live": "applied without a reboot", "reboot": "saved and the node rebooted",
                            "staged": "saved for the next boot"}[action]  # fmt: skip
    return {
        "message": message + (f" ({'; '.join(done)})" if done else ""),
        "action": action,
        "changes": [{"path": c.path, "live": c.live} for c in found],
    }


def read_saved(path: Path = SAVED) -> bytes | None:
    """The saved config's bytes, None when there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


# --- on the node ------------------------------------------------------------------------------


def network_summary(state: NetworkState) -> str:
    """One line of what the links have after a live network change, for the operator."""
    links = [
        f"{link.name} {' '.join(link.addresses) or 'no address yet'} ({link.method})" for link in state.links
    ]
    servers = ", ".join(state.nameservers) or "none"
    return f"network {'; '.join(links) or 'no links'}; nameservers {servers}"


def apply_live(
    cfg: MachineConfig,
    address: str | None,
    network_now: Callable[[MachineNetwork | None], NetworkState] | None = None,
) -> list[str]:  # pragma: no cover - the node's kernel
    """sysctls, files, network and hostname of ``cfg`` now (what the apply phase does at boot); what it did.

    ``network_now`` re-runs the node's network manager with the new ``machine.network`` (it removes
    what the old config added and adds what the new one asks for); the hostname then maps to the
    node's address after that change.
    """
    from talos_os.init import network, syscalls
    from talos_os.init.apply import config_sysctls, write_files
    from talos_os.init.hardening import write_sysctls

    done = []
    sysctls, refused = config_sysctls(cfg)
    write_sysctls(sysctls)
    if sysctls:
        done.append(f"sysctls {', '.join(f'{k}={v}' for k, v in sorted(sysctls.items()))}")
    if refused:
        done.append(f"kept KSPP values of {', '.join(refused)}")
    files = write_files(cfg)
    if files:
        done.append(f"wrote {', '.join(files)}")
    if network_now is not None:
        state = network_now(cfg.machine.network)
        done.append(network_summary(state))
        address = state.primary_address or address
    name = cfg.machine.network.hostname if cfg.machine.network else None
    if name:
        done.append(
            f"hostname {network.apply_hostname(name, network.FILES_DIR, syscalls.sethostname, address=address)}"
        )
    return done


def control_handlers(
    current: Callable[[], MachineConfig | None], replace: Callable[[MachineConfig], None], effects: Effects
) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """The control socket's ``apply_config`` op (``data`` base64, ``mode``, ``dry_run``), for osd."""
    from talos_os.config import ConfigError, loads

    def apply_config(req: dict[str, Any]) -> Any:
        try:
            data = base64.b64decode(str(req.get("data", "")), validate=True)
        except ValueError:
            raise ControlError("apply_config: 'data' must be the config in base64", BAD_REQUEST) from None
        try:
            new = loads(data)
        except ConfigError as err:
            raise ControlError(str(err), INVALID) from None
        running = current()
        if running is None:
            raise ControlError("the node has no running config to compare with")
        try:
            result = apply(
                running, new, data, str(req.get("mode", "auto")), bool(req.get("dry_run")), effects
            )
        except ReconfigureError as exc:
            raise ControlError(str(exc)) from None
        if not req.get("dry_run") and result["action"] in ("live", "reboot"):
            replace(new)
        return result

    return {"apply_config": apply_config}
