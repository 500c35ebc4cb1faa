"""A NoCloud seed ISO (volume ``cidata`` with ``user-data`` and ``meta-data``), what
``cloud-localds`` makes: attach it to a machine as a CD and the bare-metal and KVM platforms read
the machine config from it (talos_os/plugins/nocloud.py).

Rock Ridge and Joliet carry the real names (``user-data`` is not an ISO 9660 name); dates are
pinned so the same files give the same ISO.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from bakery.image import DEFAULT_EPOCH
from bakery.iso import frozen_pycdlib_clock, new_iso
from talos_os.lib.atomic import atomic_path

VOLUME_ID = "cidata"
FILES = {"user-data": "/USER_DATA.;1", "meta-data": "/META_DATA.;1"}


def default_meta_data(user_data: bytes, hostname: str | None = None) -> bytes:
    """``instance-id`` from the user-data's hash (a new config is a new instance), and the hostname."""
    lines = [f"instance-id: talos-{hashlib.sha256(user_data).hexdigest()[:16]}"]
    if hostname:
        lines.append(f"local-hostname: {hostname}")
    return ("\n".join(lines) + "\n").encode()


def build_cidata(user_data: bytes, meta_data: bytes | None, dest: Path, epoch: int = DEFAULT_EPOCH) -> Path:
    """Write the seed ISO to ``dest`` (atomically, mode 0600); ``meta_data`` None: :func:`default_meta_data`."""
    contents = {
        "user-data": user_data,
        "meta-data": default_meta_data(user_data) if meta_data is None else meta_data,
    }
    iso = new_iso(VOLUME_ID, epoch)
    try:
        with frozen_pycdlib_clock(epoch):
            for name, data in contents.items():
                iso.add_fp(io.BytesIO(data), len(data), FILES[name], rr_name=name, joliet_path="/" + name)
            with atomic_path(dest) as tmp:
                tmp.touch(mode=0o600)  # it carries the machine config's secrets
                iso.write(str(tmp))
                tmp.chmod(0o600)
    finally:
        iso.close()
    return dest
