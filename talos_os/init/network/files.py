"""The node's name and resolver files (/run/talos/etc, linked from /etc): pure rendering, atomic writes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from talos_os import pki

FILES_DIR = Path("/run/talos/etc")  # the image links /etc/hostname, hosts and resolv.conf here
MAX_NAMESERVERS = 3  # glibc reads three
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def valid_hostname(name: str) -> bool:
    return 0 < len(name) <= 253 and _HOSTNAME_RE.fullmatch(name) is not None


def render_resolv_conf(nameservers: Iterable[str], search: Iterable[str] = ()) -> str:
    """resolv.conf: up to three nameservers (all glibc reads), search domains if any."""
    lines = ["# written by the talos-os init"]
    domains = list(dict.fromkeys(search))[:6]
    if domains:
        lines.append("search " + " ".join(domains))
    lines += [f"nameserver {ns}" for ns in list(dict.fromkeys(nameservers))[:MAX_NAMESERVERS]]
    return "\n".join(lines) + "\n"


def render_hosts(hostname: str, address: str | None = None) -> str:
    """/etc/hosts: localhost, and the node's name on its address (127.0.1.1 until it has one)."""
    short = hostname.split(".", 1)[0]
    names = f"{hostname} {short}" if short != hostname else hostname
    return (
        "# written by the talos-os init\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{address or '127.0.1.1'}\t{names}\n"
    )


def write_atomic(path: Path, text: str) -> None:
    pki.write_public(path, text.encode())


def choose_hostname(
    config: str | None, platform: str | None, dhcp_name: str | None, mac: str | None = None
) -> tuple[str, str]:
    """The node's hostname and where it came from: config, else platform metadata, else DHCP, else the MAC."""
    for name, source in ((config, "config"), (platform, "platform"), (dhcp_name, "dhcp")):
        if name and valid_hostname(name):
            return name, source
    suffix = (mac or "").replace(":", "")[-6:] or "000000"
    return f"talos-{suffix}", "default"


def apply_hostname(
    name: str,
    files_dir: Path | str = FILES_DIR,
    sethostname: Callable[[str], None] | None = None,
    *,
    address: str | None = None,
) -> str:
    """Set the kernel hostname (the first label) and write hostname and hosts; returns the short name."""
    if not valid_hostname(name):
        raise ValueError(f"{name!r} is not a valid hostname: use letters, digits, dashes and dots")
    short = name.split(".", 1)[0]
    files = Path(files_dir)
    files.mkdir(parents=True, exist_ok=True)
    write_atomic(files / "hostname", short + "\n")
    write_atomic(files / "hosts", render_hosts(name, address))
    if sethostname is not None:
        sethostname(short)
    return short
