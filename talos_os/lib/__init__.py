"""What the node's programs (init, osd, the installer, the upgrade agent) and the host tools share:
retry/backoff, HTTP config fetching, cgroups, GPT, the kernel command line and atomic writes.

Kept apart from :mod:`talos_os.init` so the init is only the program that boots the node, and
nothing else imports PID 1's modules to reach a helper. Standard library only (stage 1 loads
:mod:`talos_os.lib.cmdline` from the initramfs): keep this ``__init__`` empty of imports.
"""
