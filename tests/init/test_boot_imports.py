"""tools/boot_imports reads ``-X importtime`` lines off a console: checked against a real
interpreter's output, so a change in CPython's format shows here and not on a node."""

from __future__ import annotations

import subprocess
import sys

from tools.boot_imports import parse, summary


def test_a_real_importtime_trace_is_read_with_its_nesting() -> None:
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import json"], capture_output=True, text=True, check=True
    ).stderr.splitlines()
    console = ["[    3.1] virtio_net virtio0 eth0: renamed", *trace]  # other console lines are skipped
    imports = parse(console)
    names = [i.name for i in imports]
    assert "json" in names and "json.decoder" in names and "import" not in names
    json_ = next(i for i in imports if i.name == "json")
    decoder = next(i for i in imports if i.name == "json.decoder")
    assert json_.depth == 0 and decoder.depth == 1
    assert json_.cumulative_us >= decoder.cumulative_us and json_.cumulative_us >= json_.self_us


def test_the_summary_ranks_packages_and_modules() -> None:
    lines = [
        "import time:       100 |        100 |     pyroute2.dhcp",
        "import time:      2000 |       2100 |   pyroute2",
        "import time:       500 |        500 |   yaml",
        "import time:       300 |       2900 | talos_os.init.main",
    ]
    out = summary(parse(lines), top=2)
    assert out[0] == "stage 2 imports: 0.00 s in 4 modules"
    assert out[2].split() == ["0.00", "s", "talos_os.init.main"]  # 2.9 ms, cumulative
    assert out[3].split()[-1] == "pyroute2"
    assert out[5].split()[-1] == "pyroute2"  # the costliest on its own
