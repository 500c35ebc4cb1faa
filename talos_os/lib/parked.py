"""The parked start, as both ends see it: the init launches a service early with ``TALOS_PARKED=1``
and a pipe on its stdin; the service imports everything, then waits for ``go``.

The init's side (launching, handing over, closing) is :mod:`talos_os.init.supervisor.parking`; the
service's side is :func:`parked` and :func:`wait_for_go`. Both live here so a service (osd) never
imports the supervisor to learn two constants.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO

PARKED_ENV = "TALOS_PARKED"  # set to "1" in a parked process's environment
GO = b"go\n"


def parked(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was launched parked by the init."""
    return environ.get(PARKED_ENV) == "1"


def wait_for_go(stdin: IO[bytes]) -> bool:
    """Block until the init writes ``go`` (True) or closes the pipe because the service is not
    needed (False)."""
    return stdin.readline().strip() == GO.strip()
