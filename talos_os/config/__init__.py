"""The machine config ("userdata") v1: typed model, strict validation, YAML loading and dumping.

Typical use::

    from talos_os.config import ConfigError, load

    try:
        cfg = load("/var/lib/talos/config.yaml")
    except ConfigError as err:
        print(err)  # one line per problem, each with its YAML path and position


The names load on first use (PEP 562): the model pulls in pydantic and cryptography (seconds on an
emulated node, half a second on a laptop), which ``talos_os.config.generate``, the rules and the
osctl commands that never validate a config do not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from talos_os.config.errors import ConfigError, ConfigIssue
    from talos_os.config.kinds import MachineType, Mode
    from talos_os.config.loader import dump, load, loads
    from talos_os.config.model import (
        CertAndKey,
        Cluster,
        ClusterNetwork,
        ControlPlane,
        EffectiveImages,
        ExtraArgs,
        FileOp,
        Install,
        KeyPair,
        Kubernetes,
        KubernetesImages,
        Machine,
        MachineConfig,
        MachineFile,
        MachineNetwork,
        NetworkInterface,
        Route,
        ServiceAccount,
        Trustd,
    )
    from talos_os.config.schema import json_schema

_EXPORTS = {
    "CertAndKey": "talos_os.config.model",
    "Cluster": "talos_os.config.model",
    "ClusterNetwork": "talos_os.config.model",
    "ConfigError": "talos_os.config.errors",
    "ConfigIssue": "talos_os.config.errors",
    "ControlPlane": "talos_os.config.model",
    "EffectiveImages": "talos_os.config.model",
    "ExtraArgs": "talos_os.config.model",
    "FileOp": "talos_os.config.model",
    "Install": "talos_os.config.model",
    "KeyPair": "talos_os.config.model",
    "Kubernetes": "talos_os.config.model",
    "KubernetesImages": "talos_os.config.model",
    "Machine": "talos_os.config.model",
    "MachineConfig": "talos_os.config.model",
    "MachineFile": "talos_os.config.model",
    "MachineNetwork": "talos_os.config.model",
    "MachineType": "talos_os.config.kinds",
    "Mode": "talos_os.config.kinds",
    "NetworkInterface": "talos_os.config.model",
    "Route": "talos_os.config.model",
    "ServiceAccount": "talos_os.config.model",
    "Trustd": "talos_os.config.model",
    "dump": "talos_os.config.loader",
    "json_schema": "talos_os.config.schema",
    "load": "talos_os.config.loader",
    "loads": "talos_os.config.loader",
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` when it is first asked for, and keep it here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CertAndKey",
    "Cluster",
    "ClusterNetwork",
    "ConfigError",
    "ConfigIssue",
    "ControlPlane",
    "EffectiveImages",
    "ExtraArgs",
    "FileOp",
    "Install",
    "KeyPair",
    "Kubernetes",
    "KubernetesImages",
    "Machine",
    "MachineConfig",
    "MachineFile",
    "MachineNetwork",
    "MachineType",
    "Mode",
    "NetworkInterface",
    "Route",
    "ServiceAccount",
    "Trustd",
    "dump",
    "json_schema",
    "load",
    "loads",
]
