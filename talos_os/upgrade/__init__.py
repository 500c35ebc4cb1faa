"""A/B upgrades: the upgrade bundle, GRUB's environment block, slot logic and the writer.

The pure parts (``bundle``, ``grubenv``, ``slots``) are unit-tested on the host; ``writer`` does the
disk work through small interfaces, ``node`` wires it into the init and ``drain`` talks to Kubernetes.
"""
