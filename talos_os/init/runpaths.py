"""Where the init publishes what its services read at run time (on the /run tmpfs).

Its own module, free of imports, because the earliest code of stage 2 (which parks osd before the
init's heavy imports, see talos_os.init.early) needs it.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_PATH = Path("/run/talos/config.yaml")  # what osd reads; tmpfs, mode 0600
