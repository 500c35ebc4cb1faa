"""Resident memory from smaps_rollup: this process's own, and a text that is not one."""

from __future__ import annotations

import pytest

from talos_os.lib import memory


def test_own_memory_has_shared_pages_counted_as_a_share() -> None:
    got = memory.own()
    assert got.rss_kib > 1024  # an interpreter with pytest loaded holds megabytes
    assert 0 < got.pss_kib <= got.rss_kib


def test_parse_reads_the_totals_and_refuses_another_text() -> None:
    text = (
        "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:               57344 kB\nPss:               41210 kB\n"
    )
    assert memory.parse(text) == memory.Resident(57344, 41210)
    with pytest.raises(ValueError, match="smaps_rollup"):
        memory.parse("VmRSS:\t57344 kB\n")


def test_the_init_ready_line_survives_a_kernel_without_smaps_rollup(monkeypatch: pytest.MonkeyPatch) -> None:
    line = memory.describe("init")
    assert line.startswith("init resident memory ")
    assert memory.DESCRIBED.search(line) is not None  # what make bench reads back
    monkeypatch.setattr(memory, "own", lambda: memory.parse("VmRSS: 1 kB\n"))
    assert memory.describe("init").startswith("init resident memory unknown (not a /proc/<pid>/smaps_rollup")
