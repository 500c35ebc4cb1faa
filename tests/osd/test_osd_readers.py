"""osd's readers of node facts on fixture files (formats) and on the host itself (the real thing)."""

from __future__ import annotations

import os
from pathlib import Path

from talos_os.osd import kmsg, node, transfer


def test_kmsg_format() -> None:
    assert kmsg.format_line(b"6,339,5140900,-;NET: Registered protocol family 10") == (
        b"[    5.140900] NET: Registered protocol family 10"
    )
    assert kmsg.format_line(b"12,1,123,-,caller=T1;user message") == b"[    0.000123] user message"
    assert kmsg.format_line(b" SUBSYSTEM=acpi") is None  # continuation lines are dropped
    assert kmsg.format_line(b"not a kmsg record") == b"not a kmsg record"


def test_kmsg_read_tail_and_partial_last_line(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_bytes(b"6,1,1000000,-;one\n6,2,2000000,-;two\n6,3,3000000,-;three")
    assert b"".join(kmsg.read(log)) == b"[    1.000000] one\n[    2.000000] two\n[    3.000000] three\n"
    assert b"".join(kmsg.read(log, tail=1)) == b"[    3.000000] three\n"  # unterminated, still the last


def test_meminfo(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:        2048 kB\nMemFree:  1024 kB\nHugePages_Total:       0\nbogus\n")
    assert node.meminfo(f) == {"MemTotal": 2048 * 1024, "MemFree": 1024 * 1024, "HugePages_Total": 0}


def test_mounts_parse_escapes_and_usage(tmp_path: Path) -> None:
    f = tmp_path / "mountinfo"
    f.write_text(
        "24 1 8:1 / / ro,relatime shared:1 - squashfs /dev/sda3 ro\n"
        f"40 24 0:30 / {tmp_path}/with\\040space rw,nosuid - tmpfs tmp\\040fs rw,size=1024k\n"
        "broken line\n"
    )
    (tmp_path / "with space").mkdir()
    root, spaced = node.mounts(f)
    assert (root.source, root.target, root.fstype, root.options) == (
        "/dev/sda3",
        "/",
        "squashfs",
        "ro,relatime",
    )
    assert root.size > 0  # statvfs of the host's /
    assert spaced.target == f"{tmp_path}/with space" and spaced.source == "tmp fs"


def test_service_of_cgroup() -> None:
    assert node._service_of_cgroup("0::/talos/osd\n", "/talos") == "osd"
    assert node._service_of_cgroup("0::/talos/containerd/shim\n", "/talos") == "containerd"
    assert node._service_of_cgroup("0::/user.slice\n", "/talos") is None
    assert node._service_of_cgroup("4:memory:/talos/osd\n", "/talos") is None  # only the v2 line counts


def test_secrets(tmp_path: Path) -> None:
    public = tmp_path / "public"
    public.write_text("x")
    public.chmod(0o644)
    private = tmp_path / "private"
    private.write_text("x")
    private.chmod(0o640)
    assert not transfer.is_secret(public)
    assert transfer.is_secret(private)
    assert transfer.is_secret(public, extra=[tmp_path])  # inside an extra secret tree
    assert transfer.is_secret("/run/talos/config.yaml") and transfer.is_secret("/etc/kubernetes/pki/ca.key")
    link = tmp_path / "link"
    link.symlink_to(private)
    assert transfer.is_secret(link)
    assert not transfer.is_secret(tmp_path / "missing")
    assert os.path.exists("/proc/self/status") and not transfer.is_secret("/proc/self/status")
