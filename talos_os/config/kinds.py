"""The machine config's two enumerations, on their own so that osctl's option choices and the
config generator name them without loading pydantic or the model."""

from enum import StrEnum


class MachineType(StrEnum):
    """What the node does in the cluster; decides which secrets it must (and must not) carry."""

    INIT = "init"  # the control plane node that bootstraps the cluster
    CONTROLPLANE = "controlplane"
    WORKER = "worker"

    @property
    def is_control_plane(self) -> bool:
        """Control planes hold the cluster CAs' private keys; workers never do."""
        return self is not MachineType.WORKER


class Mode(StrEnum):
    """Where the config is used: on metal the node installs itself, so it must know its disk."""

    CLOUD = "cloud"
    METAL = "metal"
