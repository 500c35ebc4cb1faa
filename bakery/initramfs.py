"""The initramfs: a minimal Python, the stage-1 init and the boot kernel modules, as a cpio archive.

Contents are computed, not listed by hand: the stdlib modules stage 1 imports (modulefinder),
the libraries each binary needs (ELF DT_NEEDED), and the boot modules' dependency closure.
The archive is written in Python (newc format) so it is byte-for-byte reproducible and can
carry device nodes (/dev/console, /dev/urandom) without root.
"""

from __future__ import annotations

import modulefinder
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bakery import deb, elf
from bakery.errors import BakeError
from bakery.tools import run
from talos_os.kmod import ModuleIndex

STAGE1_LAUNCHER = """#!/usr/bin/python3.11 -IS
# talos-os init, stage 1 (PID 1 in the initramfs).
import sys

sys.path.append("/usr/lib/python3/dist-packages")
from talos_os.init.stage1 import main

main()
"""
PYTHON = "usr/bin/python3.11"
STDLIB = "usr/lib/python3.11"
DIST = "usr/lib/python3/dist-packages"
ALWAYS_MODULES = ("encodings", "encodings.aliases", "encodings.utf_8", "encodings.latin_1", "encodings.ascii")
DEVICES = {"dev/console": (5, 1), "dev/null": (1, 3), "dev/urandom": (1, 9), "dev/kmsg": (1, 11)}
DIRS = ("dev", "proc", "sys", "run", "tmp", "sysroot", "etc/talos")


@dataclass
class Entry:
    """One cpio entry: a directory, a file (data), a symlink (target) or a char device."""

    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


@dataclass
class InitramfsReport:
    """Sizes per component (uncompressed bytes) and the compressed total."""

    sizes: dict[str, int] = field(default_factory=dict)
    compressed: int = 0
    modules: list[str] = field(default_factory=list)


class Archive:
    """Entries by path; parents are added automatically."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add_dir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), Entry(stat.S_IFDIR | 0o755))

    def add(self, path: str, entry: Entry) -> None:
        path = path.strip("/")
        if "/" in path:
            self.add_dir(path.rsplit("/", 1)[0])
        self.entries[path] = entry

    def add_from_tree(self, tree: Path, rel: str) -> None:
        """Add a file of the tree, following (and recording) symlinks inside the tree."""
        hops = 0
        while True:
            rel = deb.usr_merged(rel)  # /lib64/ld-linux... lives in usr/lib64: lib64 is a link
            src = tree / rel
            if src.is_symlink():
                target = os.readlink(src)
                self.add(rel, Entry(stat.S_IFLNK | 0o777, target.encode()))
                resolved = elf.resolve_in_root(tree, src)
                if resolved is None:
                    raise BakeError(f"initramfs: /{rel} is a dangling symlink")
                rel = str(resolved.relative_to(tree))
                hops += 1
                if hops > 10:
                    raise BakeError(f"initramfs: too many symlinks at /{rel}")
                continue
            mode = 0o755 if os.access(src, os.X_OK) else 0o644
            self.add(rel, Entry(stat.S_IFREG | mode, src.read_bytes()))
            return

    def cpio(self, mtime: int) -> bytes:
        """newc cpio, entries sorted so parents precede children; uid/gid 0; fixed mtime."""
        out = bytearray()
        for ino, path in enumerate(sorted(self.entries), start=1):
            e = self.entries[path]
            out += _header(ino, e.mode, mtime, len(e.data), e.rdev, path)
            out += e.data + b"\0" * (-len(e.data) % 4)
        out += _header(0, 0, 0, 0, (0, 0), "TRAILER!!!")
        return bytes(out)


def _header(ino: int, mode: int, mtime: int, size: int, rdev: tuple[int, int], name: str) -> bytes:
    raw = name.encode() + b"\0"
    fields = (
        ino,
        mode,
        0,
        0,
        2 if stat.S_ISDIR(mode) else 1,
        mtime,
        size,
        0,
        0,
        rdev[0],
        rdev[1],
        len(raw),
        0,
    )
    head = b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + raw
    return head + b"\0" * (-len(head) % 4)


def python_modules(tree: Path) -> list[Path]:
    """Files of every module stage 1 imports (as found in the tree), via modulefinder."""
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Path(tmp, "init.py")
        launcher.write_text(STAGE1_LAUNCHER)
        finder = modulefinder.ModuleFinder(
            path=[str(tree / STDLIB), str(tree / STDLIB / "lib-dynload"), str(tree / DIST)]
        )
        finder.run_script(str(launcher))
        for name in ALWAYS_MODULES:
            finder.import_hook(name)
    files = []
    for name, mod in finder.modules.items():
        path: str | None = getattr(mod, "__file__", None)
        if name == "__main__" or not path:
            continue
        files.append(Path(path))
    return sorted(files)


def _pyc_for(source: Path) -> Path:
    return source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"


def build(
    tree: Path,
    kernel_root: Path,
    kernel_version: str,
    index: ModuleIndex,
    load_order: list[str],
    out: Path,
    mtime: int,
) -> InitramfsReport:
    """Write the compressed initramfs to ``out``; ``tree`` is the finished (compiled) rootfs tree."""
    arc = Archive()
    report = InitramfsReport()
    for d in DIRS:
        arc.add_dir(d)
    for link in ("bin", "sbin", "lib", "lib64"):
        arc.add(link, Entry(stat.S_IFLNK | 0o777, f"usr/{link}".encode()))
    for path, (major, minor) in DEVICES.items():
        arc.add(path, Entry(stat.S_IFCHR | 0o600, rdev=(major, minor)))
    arc.add("init", Entry(stat.S_IFREG | 0o755, STAGE1_LAUNCHER.encode()))

    # Python: sourceless bytecode next to where each module would be, plus extensions.
    elves = [PYTHON]
    py_bytes = 0
    for src in python_modules(tree):
        rel = src.relative_to(tree)
        if src.suffix == ".so":
            arc.add_from_tree(tree, str(rel))
            elves.append(str(rel))
            py_bytes += src.stat().st_size
            continue
        pyc = _pyc_for(src)
        if not pyc.exists():
            raise BakeError(f"initramfs: no bytecode for /{rel}; the rootfs must be compiled first")
        data = pyc.read_bytes()
        arc.add(str(rel.with_suffix(".pyc")), Entry(stat.S_IFREG | 0o644, data))
        py_bytes += len(data)
    report.sizes["python modules"] = py_bytes

    # Binaries and the shared libraries they need, transitively.
    lib_bytes = 0
    seen: set[str] = set()
    while elves:
        todo = elves.pop()
        if todo in seen:
            continue
        seen.add(todo)
        arc.add_from_tree(tree, todo)
        real = elf.resolve_in_root(tree, tree / todo)
        assert real is not None
        lib_bytes += real.stat().st_size
        info = elf.read(real)
        if info is None:
            continue
        found, missing = elf.resolve(tree, real.parent, info)
        if missing:
            raise BakeError(f"initramfs: /{todo} needs {', '.join(missing)}, which the rootfs lacks")
        elves.extend(str(p.relative_to(tree)) for p in found.values())
        if info.interpreter:
            elves.append(info.interpreter.lstrip("/"))
    report.sizes["python + libraries"] = lib_bytes

    # Kernel modules: the closure, a modules.dep for just them, and the load order.
    moddir = f"usr/lib/modules/{kernel_version}"
    names = index.closure(load_order)
    mod_bytes = 0
    dep_lines = []
    for name in names:
        mod_rel = index.paths[name]
        data = (kernel_root / moddir / mod_rel).read_bytes()
        arc.add(f"{moddir}/{mod_rel}", Entry(stat.S_IFREG | 0o644, data))
        mod_bytes += len(data)
        deps = " ".join(index.paths[d] for d in index.deps[name])
        dep_lines.append(f"{mod_rel}: {deps}".rstrip())
    arc.add(f"{moddir}/modules.dep", Entry(stat.S_IFREG | 0o644, ("\n".join(dep_lines) + "\n").encode()))
    arc.add("etc/talos/modules", Entry(stat.S_IFREG | 0o644, ("\n".join(load_order) + "\n").encode()))
    report.sizes["kernel modules"] = mod_bytes
    report.modules = names

    raw = out.with_name(out.name + ".cpio")
    raw.write_bytes(arc.cpio(mtime))
    try:
        run(["zstd", "-q", "-f", "-19", "-T1", "--no-progress", raw, "-o", out], what="zstd")
    finally:
        raw.unlink(missing_ok=True)
    report.compressed = out.stat().st_size
    return report
