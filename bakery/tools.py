"""Host tools the bakery runs, and the Debian package that provides each one."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bakery.errors import BakeError

# tool -> Debian package (the list `make deps` installs lives in deps/apt-packages.txt)
TOOL_PACKAGES: dict[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "depmod": "kmod",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sgdisk": "gdisk",
    "zstd": "zstd",
    "grub-mkimage": "grub-common",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
}

# Variables a tool must not inherit from the bake's environment. mksquashfs refuses to run when
# SOURCE_DATE_EPOCH is set next to -all-time/-mkfs-time ("SOURCE_DATE_EPOCH and command line options
# can't be used at the same time"); the bake passes the same epoch on its command line instead.
_NOT_INHERITED: dict[str, tuple[str, ...]] = {"mksquashfs": ("SOURCE_DATE_EPOCH",)}

# Tools live in sbin on Debian; an unprivileged user's PATH may lack it.
_EXTRA_PATH = ("/usr/sbin", "/sbin")


def which(tool: str) -> str:
    """Absolute path of ``tool`` or a BakeError naming the package to install."""
    path = shutil.which(tool) or shutil.which(tool, path=os.pathsep.join(_EXTRA_PATH))
    if path:
        return path
    package = TOOL_PACKAGES.get(tool, tool)
    raise BakeError(
        f"host tool {tool!r} is missing: install it with `apt-get install {package}` (or `make deps`)"
    )


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    what: str | None = None,
    capture: bool = True,
) -> str:
    """Run a host tool; on failure raise a BakeError with the tool's last lines of output."""
    args = [str(a) for a in argv]
    args[0] = which(args[0])
    dropped = _NOT_INHERITED.get(Path(args[0]).name, ())
    inherited = {k: v for k, v in os.environ.items() if k not in dropped}
    full_env = {**inherited, "LC_ALL": "C.UTF-8", **(env or {})}
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").strip().splitlines()[-8:])
        label = what or Path(args[0]).name
        raise BakeError(f"{label} failed (exit {proc.returncode}): {tail or 'no output'}")
    return proc.stdout or ""
