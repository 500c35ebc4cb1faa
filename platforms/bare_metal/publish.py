"""Bare metal's publishing, without the commands: the checks of a target disk and of NoCloud inputs,
the cidata ISO, and the records ``-o json|yaml`` prints.

KVM's ``--config`` reuses :func:`checked_user_data` and :func:`write_cidata` (the same NoCloud CD).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from pathlib import Path

import click
import yaml

from bakery import cidata as cidata_iso
from bakery import install as installer
from bakery.errors import BakeError
from bakery.image import BakeOptions

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def preflight_disk(disk: Path, image: Path | None, image_size: int, force: bool) -> None:
    """Every check of the target that needs no image bytes, before a bake: it exists (or is a file to
    create outside /dev), it can be opened, it is not in use, big enough and (unless --force) empty."""
    target = installer.inspect_target(disk)
    if target.exists:
        try:
            fd = os.open(target.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise BakeError(open_failed(disk, exc)) from None
        os.close(fd)
    if image is not None:
        installer.check(target, image, image_size, force)
        return
    busy = installer.uses(target)
    if busy:
        raise BakeError(f"refusing to write to {target.path}: {'; '.join(busy)}; unmount or release it first")
    if target.size and target.size < image_size:
        raise BakeError(
            f"{target.path} has {target.size >> 20} MiB but the image will need {image_size >> 20} MiB: "
            "use a larger disk or a smaller --disk-size"
        )
    found = installer.signatures(*installer.read_ends(target))
    if found and not force:
        raise BakeError(
            f"refusing to overwrite {target.path}: it holds {' and '.join(found)}; pass --force to overwrite it"
        )


def open_failed(disk: Path, exc: OSError) -> str:
    """One sentence for a target that cannot be opened (nothing was written)."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot open {disk} for writing (need root?): {exc.strerror}"
    return f"cannot open {disk} for writing: {exc.strerror or exc}"


def install_record(image: Path, report: installer.Report) -> dict[str, object]:
    """What ``install`` wrote and verified, for ``-o json|yaml``."""
    return {
        "image": image.resolve(),
        "disk": report.target.path,
        "kind": "disk" if report.target.block else "file",
        "image_bytes": report.image_size,
        "data_bytes": report.data_bytes,
        "zeroed_bytes": report.zeroed_bytes,
        "sha256": report.sha256,
        "verified": True,  # install() raises when the read-back differs
        "write_seconds": round(report.write_seconds, 2),
        "verify_seconds": round(report.verify_seconds, 2),
        "backup_gpt_moved_to_bytes": report.gpt_moved_to,
        "notes": report.notes,
    }


def checked_hostname(hostname: str) -> str:
    """A host name as RFC 1123 has it (dot-separated labels of letters, digits and inner hyphens)."""
    if len(hostname) > 253 or not all(_HOST_LABEL.match(label) for label in hostname.split(".")):
        raise BakeError(
            f"hostname {hostname!r} is not valid: use letters, digits and hyphens (not first or last), "
            "up to 63 per dot-separated label"
        )
    return hostname


def checked_meta_data(path: Path) -> bytes:
    """A NoCloud meta-data file: a YAML mapping with an ``instance-id`` (and a valid local-hostname)."""
    data = path.read_bytes()
    try:
        meta = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise BakeError(
            f"--meta-data {path} is not valid YAML ({getattr(exc, 'problem', exc)}): fix it"
        ) from None
    if not isinstance(meta, dict):
        raise BakeError(f"--meta-data {path} must be a YAML mapping such as `instance-id: node-1`")
    instance = meta.get("instance-id")
    if not isinstance(instance, str | int) or not str(instance).strip():
        raise BakeError(f"--meta-data {path} has no instance-id: add `instance-id: SOMETHING-UNIQUE`")
    if "local-hostname" in meta:
        checked_hostname(str(meta["local-hostname"]))
    return data


def checked_user_data(path: Path, validate: bool) -> bytes:
    """The machine config's bytes (``-``: stdin); with ``validate``, refused unless it is a valid config."""
    data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    path = Path("stdin") if str(path) == "-" else path
    if validate:
        from talos_os.config import ConfigError  # pydantic: imported only when a config is checked
        from talos_os.config import loads as load_config

        try:
            load_config(data)
        except ConfigError as err:
            for issue in err.issues:
                click.echo(f"  {issue}", err=True)
            raise BakeError(
                f"{path} is not a valid machine config ({len(err.issues)} problem(s) above): "
                "fix it, or pass --no-validate to write it anyway"
            ) from None
    return data


def cidata_record(iso: Path, meta: bytes) -> dict[str, object]:
    """What ``cidata`` wrote, for ``-o json|yaml`` (never the config itself: it holds secrets)."""
    fields = yaml.safe_load(meta)
    return {
        "iso": iso.resolve(),
        "size_bytes": iso.stat().st_size,
        "mode": f"{stat.S_IMODE(iso.stat().st_mode):04o}",
        "volume": cidata_iso.VOLUME_ID,
        "instance_id": str(fields["instance-id"]),
        "hostname": fields.get("local-hostname"),
    }


def write_cidata(user_data: bytes, meta: bytes | None, hostname: str | None, dest: Path) -> Path:
    """The NoCloud ISO at ``dest``, mode 0600 (it carries the config's secrets)."""
    if meta is None:
        meta = cidata_iso.default_meta_data(user_data, hostname)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return cidata_iso.build_cidata(user_data, meta, dest, epoch=BakeOptions().epoch)
