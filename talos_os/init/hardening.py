"""Kernel hardening: the KSPP kernel parameters the node refuses to run without, and the KSPP sysctls.

The bakery writes ``KSPP_CMDLINE`` into every boot entry; the init checks it and applies the sysctls.
"""

from __future__ import annotations

from pathlib import Path

from talos_os.lib.cmdline import Cmdline

KSPP_CMDLINE = ("init_on_alloc=1", "init_on_free=1", "slab_nomerge", "pti=on")
KSPP_SYSCTLS: dict[str, str] = {
    "kernel.kptr_restrict": "2",
    "kernel.dmesg_restrict": "1",
    "kernel.perf_event_paranoid": "3",
    "kernel.yama.ptrace_scope": "2",
    "kernel.unprivileged_bpf_disabled": "1",
    "net.core.bpf_jit_harden": "2",
    "fs.protected_symlinks": "1",
    "fs.protected_hardlinks": "1",
    "fs.protected_fifos": "2",
    "fs.protected_regular": "2",
}


def missing_kspp(cmdline: Cmdline) -> list[str]:
    """The KSPP kernel parameters absent from (or overridden on) the command line."""
    missing = []
    for want in KSPP_CMDLINE:
        key, sep, value = want.partition("=")
        if not cmdline.has(key) or (sep and cmdline.get(key) != value):
            missing.append(want)
    return missing


def write_sysctls(values: dict[str, str], proc_sys: Path = Path("/proc/sys")) -> list[str]:
    """Apply sysctls; returns the keys this kernel does not have (Yama may be absent)."""
    absent = []
    for key, value in values.items():
        path = proc_sys / key.replace(".", "/")
        if not path.exists():
            absent.append(key)
            continue
        path.write_text(value)
    return absent
