"""The initramfs: a minimal Python, the stage-1 init and the boot kernel modules, as a cpio archive.

Contents are computed, not listed by hand: the modules stage 1 imports (traced with the root's own Python),
the libraries each binary needs (ELF DT_NEEDED), and the boot modules' dependency closure.
The archive is written in Python (newc format) so it is byte-for-byte reproducible and can
carry device nodes (/dev/console, /dev/urandom) without root.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bakery import deb, elf
from bakery.errors import BakeError
from bakery.tools import run
from talos_os.kmod import ModuleIndex, canonical

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
# Stage 1 loads only what finds and mounts the root: block and SCSI/ATA drivers, virtio transport, the
# root's file systems (squashfs; iso9660 and loop for the live ISO). Every other boot module (network
# cards, fw_cfg, vfat, xfs, overlay...) is loaded by stage 1 from the mounted root
# (``etc/talos/modules.late``), so the initramfs GRUB reads and the kernel unpacks stays small.
ROOT_MODULE_DIRS = (
    "kernel/drivers/block/",
    "kernel/drivers/scsi/",
    "kernel/drivers/ata/",
    "kernel/drivers/cdrom/",
    "kernel/drivers/nvme/",
    "kernel/drivers/virtio/",
    "kernel/drivers/md/",
    "kernel/drivers/mmc/",
    "kernel/drivers/usb/storage/",
    "kernel/fs/squashfs/",
    "kernel/fs/isofs/",
)


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


# Run by the tree's own interpreter: import stage 1 the way /init does, exercise what it calls that
# imports more at run time, and print the file of every module then loaded.
_TRACE = """
import sys
sys.path.append(sys.argv[1])
from talos_os.init import stage1, syscalls
syscalls.libc()
stage1.parse_root("iso:L/a.sqsh")
for name in sys.argv[2:]:
    __import__(name)
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
print("\\n".join(sorted(f for f in files if f)))
"""


def python_modules(tree: Path) -> list[Path]:
    """Files of exactly the modules stage 1 loads, found by importing it with the tree's Python.

    A static scan (modulefinder) follows every import in every function and pulled in asyncio,
    email, multiprocessing and libcrypto (9 MB of initramfs that GRUB reads through the BIOS and
    the kernel unpacks at every boot); stage 1 imports only what it names at the top.
    """
    loader = tree / "usr/lib64/ld-linux-x86-64.so.2"
    argv = [str(loader), "--library-path", str(tree / "usr/lib/x86_64-linux-gnu"), str(tree / PYTHON),
            "-IS", "-c", _TRACE, str(tree / DIST), *ALWAYS_MODULES]  # fmt: skip
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, cwd=tree, env={"LC_ALL": "C.UTF-8"}
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise BakeError(f"initramfs: importing stage 1 with the root's Python failed:\n{tail}")
    files = []
    for name in proc.stdout.splitlines():
        path = Path(name)
        try:
            path.relative_to(tree)
        except ValueError:
            raise BakeError(f"initramfs: stage 1 loaded {path}, which is outside the root tree") from None
        files.append(path)
    return sorted(files)


def split_boot_modules(index: ModuleIndex, load_order: list[str]) -> tuple[list[str], list[str]]:
    """The boot modules stage 1 loads (those that reach the root) and the ones it leaves to the root."""
    root: list[str] = []
    late: list[str] = []
    for name in load_order:
        path = index.paths.get(canonical(name))
        (root if path is None or path.startswith(ROOT_MODULE_DIRS) else late).append(name)
    return root, late


def render_platform_modules(table: Mapping[str, Sequence[str]]) -> str:
    """``platform: module ...`` lines for stage 1 (``*``: that platform loads every boot module)."""
    lines = ["# platform: the boot modules it loads from the root (*: all); unclaimed ones load everywhere"]
    for name, mods in sorted(table.items()):
        lines.append(f"{name}: {' '.join(mods)}".rstrip())
    return "\n".join(lines) + "\n"


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
    platform_modules: Mapping[str, Sequence[str]],
) -> InitramfsReport:
    """Write the compressed initramfs to ``out``; ``tree`` is the finished (compiled) rootfs tree.

    ``platform_modules`` (from ``steps.platform_module_table``) tells stage 1 which late boot
    modules each platform loads."""
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
    root_order, late_order = split_boot_modules(index, load_order)
    names = index.closure(root_order)
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
    arc.add("etc/talos/modules", Entry(stat.S_IFREG | 0o644, ("\n".join(root_order) + "\n").encode()))
    arc.add("etc/talos/modules.late", Entry(stat.S_IFREG | 0o644, ("\n".join(late_order) + "\n").encode()))
    table = render_platform_modules(platform_modules)
    arc.add("etc/talos/modules.platforms", Entry(stat.S_IFREG | 0o644, table.encode()))
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
