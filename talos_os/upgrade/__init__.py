"""A/B upgrades: the upgrade bundle, GRUB's environment block, slot logic and the writer.

The pure parts (``bundle``, ``grubenv``, ``slots``) are unit-tested on the host; ``writer`` does the
disk work through small interfaces, ``agent`` is the init's side and ``drain`` talks to Kubernetes.
"""

from pathlib import Path

# Where osd puts a bundle it fetched or received, for the init's agent to verify and write (on /var).
STAGING = Path("/var/lib/talos/upgrade")
