"""Rules on the raw machine-config document: which secrets each role carries, what each install mode
needs, and the keys a mapping may hold (for "did you mean" hints).

They read the input as given (mappings or model instances) so that they still apply when some other
part of the document fails validation; :class:`talos_os.config.model.MachineConfig` runs them.
"""

import types
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from talos_os.config.kinds import MachineType, Mode

Loc = tuple[int | str, ...]


_ABSENT = object()

# (YAML alias, attribute name) steps to each secret, and what it is.
_Step = tuple[str, str]
_ROLE_SECRETS: tuple[tuple[tuple[_Step, ...], str], ...] = (
    ((("machine", "machine"), ("ca", "ca"), ("key", "key")), "OS CA private key"),
    ((("cluster", "cluster"), ("ca", "ca"), ("key", "key")), "Kubernetes CA private key"),
    ((("cluster", "cluster"), ("serviceAccount", "service_account")), "service account key"),
    (
        (("cluster", "cluster"), ("aescbcEncryptionSecret", "aescbc_encryption_secret")),
        "secrets encryption key",
    ),
    ((("cluster", "cluster"), ("frontProxyCA", "front_proxy_ca")), "front proxy CA"),
    ((("cluster", "cluster"), ("etcdCA", "etcd_ca")), "etcd CA"),
)
# Only on control planes: inside the sections above that workers must not have at all.
_CONTROL_PLANE_ONLY: tuple[tuple[tuple[_Step, ...], str], ...] = (
    ((("cluster", "cluster"), ("frontProxyCA", "front_proxy_ca"), ("key", "key")), "front proxy CA key"),
    ((("cluster", "cluster"), ("etcdCA", "etcd_ca"), ("key", "key")), "etcd CA key"),
)


def _child(container: object, step: _Step) -> object:
    alias, name = step
    if isinstance(container, dict):
        for key in (alias, name):
            if key in container and container[key] is not None:
                return container[key]
        return _ABSENT
    if isinstance(container, BaseModel):
        value = getattr(container, name, None)
        return _ABSENT if value is None else value
    return _ABSENT


def _is_mapping(value: object) -> bool:
    return isinstance(value, dict | BaseModel)


def _lookup(data: object, steps: Sequence[_Step]) -> tuple[object, object]:
    """(parent, value) at ``steps``; either is _ABSENT when the path does not exist."""
    parent: object = data
    for step in steps[:-1]:
        parent = _child(parent, step)
    return parent, _child(parent, steps[-1]) if _is_mapping(parent) else _ABSENT


def role_problems(data: object) -> Iterator[tuple[Loc, str]]:
    raw_type = _child(_child(data, ("machine", "machine")), ("type", "type"))
    if not isinstance(raw_type, str) or raw_type not in MachineType._value2member_map_:
        return  # a missing or bad type is reported by field validation
    role = MachineType(raw_type)
    for steps, what in _ROLE_SECRETS:
        parent, value = _lookup(data, steps)
        loc = tuple(alias for alias, _ in steps)
        if role is MachineType.WORKER and value is not _ABSENT:
            yield loc, f"expected no {what} on a worker node (only control planes carry it), got one"
        elif role.is_control_plane and value is _ABSENT and _is_mapping(parent):
            yield loc, f"missing {what}, which {role.value} nodes require"
    if role.is_control_plane:
        for steps, what in _CONTROL_PLANE_ONLY:
            parent, value = _lookup(data, steps)
            if value is _ABSENT and _is_mapping(parent):
                yield tuple(alias for alias, _ in steps), f"missing {what}, which {role.value} nodes require"


def mode_problems(data: object, mode: object) -> Iterator[tuple[Loc, str]]:
    if mode != Mode.METAL:
        return
    machine = _child(data, ("machine", "machine"))
    install = _child(machine, ("install", "install"))
    if not _is_mapping(machine) or (install is not _ABSENT and not _is_mapping(install)):
        return
    if _child(install, ("disk", "disk")) is _ABSENT:
        yield ("machine", "install", "disk"), "missing install disk, which metal mode requires"


SUGGESTED = 100  # errors that get "did you mean" suggestions


def allowed_keys(root: type[BaseModel], loc: Loc) -> list[str] | None:
    """YAML keys of the model found at ``loc`` (for "did you mean" hints), None when it is not a model."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            field = next((f for n, f in fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is list and isinstance(part, int):
            current = get_args(current)[0]
        elif get_origin(current) is dict and isinstance(part, str):
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [field.alias or name for name, field in current.model_fields.items()]
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional so the model or container type underneath shows."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
