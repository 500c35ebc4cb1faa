"""The bakery: pinned recipes become a squashfs root, an initramfs and a bootable disk image."""
