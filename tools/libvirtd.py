"""Bring up the system libvirtd (qemu:///system) without systemd: used by the test fixture and CI.

Debian's libvirt-daemon-system expects systemd socket activation. Here the daemons run as plain
``-d`` processes once the user, group and runtime directories they need exist. Idempotent: a daemon
whose socket answers is left alone. ``python -m tools.libvirtd`` does the same from a shell.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

RUN_DIR = Path("/run/libvirt")
LIBVIRTD_SOCKET = RUN_DIR / "libvirt-sock"
VIRTLOGD_SOCKET = RUN_DIR / "virtlogd-sock"
QEMU_USER = "libvirt-qemu"
QEMU_GROUP = "kvm"
DIRS = (
    Path("/var/log/libvirt/qemu"),
    RUN_DIR,
    Path("/var/lib/libvirt/qemu"),
    Path("/var/lib/libvirt/images"),
    Path("/var/cache/libvirt/qemu"),
)


class LibvirtdError(RuntimeError):
    """libvirtd could not be brought up; the message says what to install or look at."""


def answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path`` (a stale file does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _ensure_identity() -> None:
    """The group and user libvirt runs QEMU as (the Debian package makes them; a bare machine may not)."""
    try:
        grp.getgrnam(QEMU_GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", QEMU_GROUP], check=True)
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/var/lib/libvirt",
                        "--gid", QEMU_GROUP, "--shell", "/usr/sbin/nologin", QEMU_USER], check=True)  # fmt: skip


def _start(daemon: str, sock: Path, timeout: float) -> None:
    """Start ``daemon -d`` unless its socket answers, then wait for the socket."""
    if answers(sock):
        return
    binary = shutil.which(daemon, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if binary is None:
        raise LibvirtdError(
            f"{daemon} is not installed: run `make deps` (packages libvirt-daemon-system, libvirt-clients)"
        )
    proc = subprocess.run([binary, "-d"], capture_output=True, text=True, check=False)
    deadline = time.monotonic() + timeout
    while not answers(sock):
        if time.monotonic() > deadline:
            why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LibvirtdError(f"{daemon} did not open {sock} within {timeout:.0f} s ({why[0]})")
        time.sleep(0.2)


def ensure_running(timeout: float = 60.0) -> Path:
    """Make qemu:///system reachable; returns the libvirtd socket path. Needs root."""
    if os.geteuid() != 0:
        raise LibvirtdError("starting the system libvirtd needs root: run this as root")
    _ensure_identity()
    for d in DIRS:
        d.mkdir(parents=True, exist_ok=True)
    _start("virtlogd", VIRTLOGD_SOCKET, timeout)
    _start("libvirtd", LIBVIRTD_SOCKET, timeout)
    return LIBVIRTD_SOCKET


def main() -> None:
    try:
        print(f"libvirtd is running: {ensure_running()}")
    except (LibvirtdError, subprocess.CalledProcessError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
