"""Assemble the root filesystem tree: Debian packages, wheels, modules, our init; then trim and check.

The tree becomes the read-only squashfs root. Rules enforced here (and re-checked by the tests
on the finished image): the project's init is PID 1, no shell, no SSH daemon, no package
manager, no compiler, no setuid/setgid file, every ELF finds its libraries.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bakery import deb, elf, policy
from bakery.errors import BakeError
from bakery.kubernetes import payload
from bakery.recipe import RootfsRecipe
from talos_os import __version__

PY_STDLIB = "usr/lib/python3.11"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
BIN_DIRS = ("usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin", "usr/libexec")

STAGE2_LAUNCHER = """#!/usr/bin/python3.11 -I
# talos-os init, stage 2 (PID 1 inside the read-only root). If even the import fails, say why on
# the console and reboot after a minute: PID 1 exiting would panic the kernel.
# The collector stays off while the init imports (its passes over the config model's many new
# objects cost a few percent of the imports, seconds under emulation), and what the imports made is
# then frozen: it lives as long as PID 1 and no later pass walks it again.
import ctypes, gc, time, traceback

gc.disable()
try:
    from talos_os.init import early
    parked = early.park()  # osd imports on the other CPU while the init imports below
    from talos_os.init.main import main
    gc.freeze()
    gc.enable()
except BaseException:
    with open("/dev/console", "w") as console:
        console.write("[talos] FATAL: the init cannot start:\\n" + traceback.format_exc() + "[talos] rebooting in 60 s\\n")
    time.sleep(60)
    ctypes.CDLL(None).reboot(0x01234567)
    while True:
        time.sleep(3600)
main(parked)
"""

# Files in /etc that change at run time live in /run (the root is read-only).
RUNTIME_ETC = ("hostname", "hosts", "resolv.conf")


@dataclass
class RootfsReport:
    """What went into the tree, for the manifest and the size budget."""

    files: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    removed: int = 0
    kubernetes: payload.PayloadReport | None = None


def install_wheel(wheel: Path, site: Path) -> None:
    """Unpack a wheel into site-packages; keep purelib/platlib data, drop scripts and headers."""
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename
            if name.endswith("/"):
                continue
            parts = name.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            if ".." in parts:
                raise BakeError(f"wheel {wheel.name} has an unsafe path {name!r}")
            dest = site.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(info))
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, 0o755 if mode & 0o111 else 0o644)


def api_stubs(site: Path) -> None:
    """The node API's stubs, generated from the proto inside the installed wheel (they are never committed)."""
    from talos_os.api import build as api_build

    try:
        api_build.generate(site / "talos_os" / "api", force=True)
    except api_build.BuildError as exc:
        raise BakeError(str(exc)) from None


def write_skeleton(tree: Path, version: str = __version__) -> None:
    """Mount points, /etc basics and the stage-2 init."""
    for d in (
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "etc/talos",
        "etc/ssl/certs",
        "root",
        "etc/cni",
        "etc/kubernetes",
    ):  # the last two: mount points for writable dirs from /var
        (tree / d).mkdir(parents=True, exist_ok=True)
    etc = tree / "etc"
    (etc / "os-release").write_text(
        f'NAME="talos-os"\nID=talos-os\nVERSION_ID="{version}"\nPRETTY_NAME="talos-os {version}"\n'
    )
    (etc / "passwd").write_text("root:x:0:0:root:/root:/nonexistent\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    for name in RUNTIME_ETC:
        target = etc / name
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(f"../run/talos/etc/{name}")
    init = tree / "usr/sbin/init"
    init.parent.mkdir(parents=True, exist_ok=True)
    if init.exists() or init.is_symlink():
        init.unlink()
    init.write_text(STAGE2_LAUNCHER)
    init.chmod(0o755)


def ca_bundle(tree: Path) -> None:
    """Concatenate the Mozilla roots shipped by ca-certificates (update-ca-certificates cannot run)."""
    certs = sorted((tree / "usr/share/ca-certificates").rglob("*.crt"))
    bundle = b"".join(c.read_bytes().rstrip(b"\n") + b"\n" for c in certs)
    (tree / "etc/ssl/certs/ca-certificates.crt").write_bytes(bundle)


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def prune(tree: Path, recipe: RootfsRecipe) -> int:
    """Remove what the recipe says, every executable not kept, and host-made bytecode."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(tree, topdown=True):
        rel_dir = os.path.relpath(dirpath, tree)
        for name in list(dirnames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            full = Path(dirpath, name)
            if name == "__pycache__" or _matches(rel, recipe.remove):
                if full.is_symlink():
                    full.unlink()
                else:
                    shutil.rmtree(full)
                dirnames.remove(name)
                removed += 1
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            in_bin = any(rel.startswith(d + "/") and "/" not in rel[len(d) + 1 :] for d in BIN_DIRS)
            if (
                _matches(rel, recipe.remove)
                or (in_bin and rel not in recipe.keep_executables)
                or name.endswith((".pyc", ".pyo"))
            ):
                Path(dirpath, name).unlink()
                removed += 1
    # dangling symlinks left by the removals (e.g. /usr/bin/python3 -> python3.11 stays valid)
    for dirpath, _dirs, filenames in os.walk(tree):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_symlink() and elf.resolve_in_root(tree, p) is None:
                p.unlink()
                removed += 1
    return removed


def check_libraries(tree: Path) -> None:
    """Every ELF executable and shared object finds the libraries it needs inside the tree."""
    problems = []
    for dirpath, _dirs, filenames in os.walk(tree):
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink() or not elf.is_elf(path):
                continue
            info = elf.read(path)
            if info is None:
                continue
            _found, missing = elf.resolve(tree, path.parent, info)
            if missing:
                problems.append(f"/{path.relative_to(tree)} needs {', '.join(missing)}")
    if problems:
        shown = "; ".join(problems[:5])
        raise BakeError(
            f"the root filesystem lacks shared libraries ({shown}): add their packages to rootfs.yaml"
        )


def compile_python(tree: Path) -> None:
    """Precompile all Python code in the image: hash-based pycs (no timestamps) from a process with a
    fixed hash seed, because marshal writes frozenset constants in hash order."""
    for rel in (PY_STDLIB, DIST_PACKAGES):
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-f", "-j", "0", "--invalidation-mode", "unchecked-hash",
             "-s", str(tree / rel), "-p", "/" + rel, str(tree / rel)],
            env={**os.environ, "PYTHONHASHSEED": "0"}, check=False, capture_output=True,
        )  # fmt: skip


def install_modules(tree: Path, kernel_root: Path, version: str, paths: Iterable[str]) -> None:
    """Copy the chosen kernel modules and the kernel's module metadata into the tree."""
    src = kernel_root / "usr/lib/modules" / version
    dst = tree / "usr/lib/modules" / version
    kept: set[str] = set()
    for rel in paths:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
        kept.add(rel)
    # modules.dep trimmed to the modules the image carries: the init resolves load order from it.
    dep_lines = (src / "modules.dep").read_text().splitlines() if (src / "modules.dep").exists() else []
    (dst / "modules.dep").write_text("".join(f"{ln}\n" for ln in dep_lines if ln.split(":", 1)[0] in kept))
    for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src / meta).exists():
            shutil.copy2(src / meta, dst / meta)


def size_report(tree: Path) -> dict[str, int]:
    """Bytes per component, for the size budget."""
    buckets = {
        "python stdlib": PY_STDLIB,
        "python packages": DIST_PACKAGES,
        "kernel modules": "usr/lib/modules",
        "containerd + runc": "usr/bin/containerd",
        "kubernetes binary": "usr/bin/k8s",
        "kubernetes images": "usr/share/talos/images.oci.tar",
        "cni plugins": "usr/lib/cni",
        "shared libraries": "usr/lib/x86_64-linux-gnu",
    }
    sizes = dict.fromkeys([*buckets, "other"], 0)
    for dirpath, _dirs, filenames in os.walk(tree):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                continue
            rel = str(p.relative_to(tree))
            size = p.stat().st_size
            key = next((k for k, pre in buckets.items() if rel.startswith(pre)), "other")
            if rel in ("usr/sbin/runc", "usr/bin/containerd-shim-runc-v2"):
                key = "containerd + runc"
            sizes[key] += size
    return sizes


def build(
    tree: Path,
    recipe: RootfsRecipe,
    debs: list[Path],
    wheels: list[Path],
    project_wheel: Path,
    kernel_root: Path,
    kernel_version: str,
    module_paths: list[str],
    load_modules: Sequence[str] = (),
    kubernetes_binary: Path | None = None,
    epoch: int = 0,
    version: str = __version__,
) -> RootfsReport:
    """Build the whole root filesystem tree from its inputs (with the Kubernetes payload when given)."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    deb.make_merged_root(tree)
    for d in debs:
        deb.extract(d, tree)
    site = tree / DIST_PACKAGES
    site.mkdir(parents=True, exist_ok=True)
    for w in [*wheels, project_wheel]:
        install_wheel(w, site)
    api_stubs(site)
    install_modules(tree, kernel_root, kernel_version, module_paths)
    ca_bundle(tree)
    report = RootfsReport()
    if kubernetes_binary is not None:  # before the prune: its images take files the node itself does not keep
        report.kubernetes = payload.install(tree, kubernetes_binary, tree.parent / "payload", epoch)
    report.removed = prune(tree, recipe)
    write_skeleton(tree, version)
    # The names the init loads in stage 2 (it resolves their dependencies from modules.dep).
    (tree / "etc/talos/modules.rootfs").write_text("".join(f"{m}\n" for m in load_modules))
    problems = policy.check_tree(tree)
    if problems:
        raise BakeError(f"the root filesystem breaks the image rules: {'; '.join(problems[:5])}")
    check_libraries(tree)
    compile_python(tree)
    report.sizes = size_report(tree)
    report.files = sum(len(f) for _d, _s, f in os.walk(tree))
    return report
