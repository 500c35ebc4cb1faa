"""Rootfs rules: no shell, no SSH daemon, no package manager, no compiler, no setuid/setgid."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

FORBIDDEN_NAMES = frozenset(
    {
        # shells
        "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox", "toybox",
        # remote access
        "sshd", "ssh", "dropbear", "telnetd",
        # package managers
        "apt", "apt-get", "dpkg", "pip", "pip3", "pip3.11",
        # compilers and linkers
        "gcc", "cc", "g++", "c++", "clang", "tcc", "ld", "as", "cpp",
    }
)  # fmt: skip


def violations_in_listing(entries: Iterable[tuple[str, int]]) -> list[str]:
    """Rule violations among (path, st_mode) pairs, e.g. from a tree walk or an unsquashfs listing."""
    found = []
    for path, mode in entries:
        name = path.rsplit("/", 1)[-1]
        if name in FORBIDDEN_NAMES and not stat.S_ISDIR(mode):
            found.append(f"{path}: forbidden program")
        if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(f"{path}: setuid/setgid")
    return found


def walk(root: Path) -> list[tuple[str, int]]:
    """(path relative to root, st_mode) for every entry below root, not following symlinks."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out.append(("/" + os.path.relpath(full, root), os.lstat(full).st_mode))
    return sorted(out)


def check_tree(root: Path) -> list[str]:
    """Rule violations in an unpacked root filesystem."""
    return violations_in_listing(walk(root))


def mode_from_ls(text: str) -> int:
    """``-rwsr-xr-x`` (as printed by ``unsquashfs -lls`` or ``ls -l``) -> st_mode."""
    kinds = {"-": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "c": stat.S_IFCHR,
             "b": stat.S_IFBLK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK}  # fmt: skip
    mode = kinds.get(text[0], 0)
    bits = [stat.S_IRUSR, stat.S_IWUSR, stat.S_IXUSR, stat.S_IRGRP, stat.S_IWGRP, stat.S_IXGRP,
            stat.S_IROTH, stat.S_IWOTH, stat.S_IXOTH]  # fmt: skip
    for i, ch in enumerate(text[1:10]):
        if ch not in "-ST":
            mode |= bits[i]
    special = {3: stat.S_ISUID, 6: stat.S_ISGID, 9: stat.S_ISVTX}
    for pos, bit in special.items():
        if len(text) > pos and text[pos] in "sStT":
            mode |= bit
    return mode
