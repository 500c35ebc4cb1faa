"""What stage 2 does first, before the init's own imports: park osd (talos_os.init.supervisor.parking).

The launcher (``/sbin/init``, written by the bakery) calls :func:`park` and then imports
:mod:`talos_os.init.main`, whose imports (the config model, the network stack) take as long under
software emulation as osd's own; with osd parked, the two import at once on the node's two CPUs,
and osd answers a few seconds after the node is ready instead of twenty. This module imports only
the supervisor's runner parts, so osd is launched within the first second of stage 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from talos_os.init.console import Console
from talos_os.init.services import osd_spec
from talos_os.init.supervisor.parking import ParkingRunner
from talos_os.init.supervisor.reaper import ChildReaper


@dataclass
class Early:
    """What the init takes over from its first second: the reaper (PID 1's only waitpid) and the
    parked services (None when parking failed: services then start the usual way)."""

    console: Console
    reaper: ChildReaper
    parking: ParkingRunner | None


def park() -> Early:
    """Start PID 1's reaper and park osd; a failure costs only the head start, and says so."""
    console = Console()
    reaper = ChildReaper()
    reaper.start()
    parking = ParkingRunner(reaper, note=console.log)
    try:
        parking.park(osd_spec())
    except Exception as exc:  # PID 1 must go on: osd then starts when its turn comes
        console.log(f"early: osd not parked ({exc}): it starts when the node is ready")
        return Early(console, reaper, None)
    return Early(console, reaper, parking)
