"""Just enough ELF reading to find each binary's shared-library needs (DT_NEEDED, RUNPATH).

The bakery uses it to prove every executable and extension in the image finds its libraries,
and to pull the exact libraries the initramfs needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 1, 5, 15, 29
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib", "usr/lib64")


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader will look for."""

    needed: tuple[str, ...]
    runpath: tuple[str, ...]
    interpreter: str | None


def is_elf(path: Path) -> bool:
    """True for a regular file starting with the ELF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def read(path: Path) -> ElfInfo | None:
    """Dynamic-section facts of a 64-bit little-endian ELF file; None for static or other files."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    interp = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_INTERP:
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return ElfInfo((), (), interp)

    def offset_of(vaddr: int) -> int:
        for start, off, size in loads:
            if start <= vaddr < start + size:
                return vaddr - start + off
        return vaddr

    entries = []
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab = offset_of(next((v for t, v in entries if t == DT_STRTAB), 0))

    def string(at: int) -> str:
        end = data.index(b"\0", strtab + at)
        return data[strtab + at : end].decode()

    needed = tuple(string(v) for t, v in entries if t == DT_NEEDED)
    runpath = tuple(p for t, v in entries if t in (DT_RPATH, DT_RUNPATH) for p in string(v).split(":") if p)
    return ElfInfo(needed, runpath, interp)


def resolve(root: Path, origin: Path, info: ElfInfo) -> tuple[dict[str, Path], list[str]]:
    """Map each needed library to its file under ``root``; also return those not found."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for lib in info.needed:
        dirs = [
            (origin if p.startswith("$ORIGIN") else root) / p.replace("$ORIGIN", "").lstrip("/")
            for p in info.runpath
        ] + [root / d for d in LIB_DIRS]
        for d in dirs:
            real = resolve_in_root(root, d / lib)
            if real is not None and real.is_file():
                found[lib] = d / lib
                break
        else:
            missing.append(lib)
    return found, missing


def resolve_in_root(root: Path, path: Path) -> Path | None:
    """Follow symlinks in ``path`` as if ``root`` were ``/`` (absolute links stay inside root)."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    parts = list(rel.parts)
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = Path(str(candidate.readlink()))
            if target.is_absolute():
                current = root
                parts = list(target.parts[1:]) + parts
            else:
                parts = list(target.parts) + parts
            continue
        if not candidate.exists():
            return None
        current = candidate
    return current
