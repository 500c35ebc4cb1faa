"""The boot bench's stage split, from a stamped serial log (the figures themselves belong to make bench)."""

from __future__ import annotations

import pytest

from tools.bench_boot import BootRun, osd_start, stages, table

LOG = [
    (0.2, "SeaBIOS (version 1.16.2-debian-1.16.2-1)"),
    (0.5, "Welcome to GRUB!"),
    (7.1, "[    0.000000] Linux version 6.1.0-57-cloud-amd64"),
    (13.0, "[    6.500000] Run /init as init process"),
    (
        18.3,
        "[talos] [ 3.821] stage1: kernel 6.1.0-57-cloud-amd64: loaded 9 modules; 20 more load from the root",
    ),
    (18.4, "[talos] [ 3.877] stage1: root ROOT-A (/dev/vda4) mounted read-only; switching root"),
    (18.6, "[talos] [ 4.100] stage1: exec /sbin/init"),
    (30.0, "[talos] phase early mounts: done in 100 ms"),
    (30.5, "[talos] phase hardening: done in 15 ms"),
    (33.0, "[talos] phase config: done in 2400 ms"),
    (
        33.1,
        "[talos] node ready: bench in 3.0 s of init (27.0 s since power-on); init resident memory 50000 KiB "
        "(proportional 41000 KiB)",
    ),
]


def test_stages_cover_qemu_start_to_the_answer_in_order() -> None:
    got = stages(LOG, answered=40.0)
    assert list(got) == ["firmware", "loader", "kernel", "stage 1", "switch root", "stage 2 start",
                         "phase early mounts", "phase hardening", "phase config", "until ready", "osd answers"]  # fmt: skip
    assert got["firmware"] == pytest.approx(0.5)
    assert got["loader"] == pytest.approx(6.6)  # until the kernel's first line, on the QEMU clock
    assert got["kernel"] == pytest.approx(5.9)  # its own timestamps (6.5 s) are not trusted
    assert got["stage 1"] == pytest.approx(5.4) and got["switch root"] == pytest.approx(0.2)
    assert got["stage 2 start"] == pytest.approx(30.0 - 0.1 - 18.6)
    assert got["osd answers"] == pytest.approx(6.9)
    assert sum(got.values()) == pytest.approx(40.0)


def test_direct_kernel_boot_has_no_loader_row_and_the_table_has_medians() -> None:
    got = stages([(t, text) for t, text in LOG if "GRUB" not in text], answered=40.0)
    assert "firmware + loader" in got and "loader" not in got
    runs = {"bios": [BootRun("bios", stages=got, total=40.0, init_rss_mib=40.0), BootRun("bios", total=44.0)]}
    lines = table(runs)
    assert any("QEMU start -> osctl version" in line and "42.0" in line for line in lines)


def test_osd_start_and_its_steps_come_from_its_serving_line() -> None:
    line = ("osd: serving the node API on port 50000 (started 14.2 s after boot, imports 7.0 s, parked 5.6 s, "
            "serving 2.6 s later (config 0.1 s, identity 1.3 s, listen 0.4 s, TLS 1.2 check 0.8 s), 29.5 s after boot)")  # fmt: skip
    got = osd_start("earlier lines\n" + line + "\n")
    assert got == {"started": 14.2, "imports": 7.0, "parked": 5.6, "serving": 2.6, "osd: config": 0.1,
                   "osd: identity": 1.3, "osd: listen": 0.4, "osd: TLS 1.2 check": 0.8}  # fmt: skip
    lines = table({"bios": [BootRun("bios", total=30.0, osd_start=got)]})
    assert any(line.split() == ["TLS", "1.2", "check", "0.8"] for line in lines)
    assert osd_start("an older osd: serving 2.6 s later, 29.5 s after boot") == {}


def test_the_ready_line_gives_the_init_pss() -> None:
    from tools.bench_boot import READY_PSS

    m = next(m for _, line in LOG if (m := READY_PSS.search(line)))
    assert int(m.group(1)) == 41000
