"""The machine config ("userdata") v1: typed model, strict validation, YAML loading and dumping.

Typical use::

    from talos_os.config import ConfigError, load

    try:
        cfg = load("/var/lib/talos/config.yaml")
    except ConfigError as err:
        print(err)  # one line per problem, each with its YAML path and position
"""

from talos_os.config.errors import ConfigError, ConfigIssue
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
from talos_os.config.rules import MachineType, Mode
from talos_os.config.schema import json_schema

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
