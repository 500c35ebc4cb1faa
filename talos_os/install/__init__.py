"""Writing talos-os onto a disk: the target's checks, the write and its verification, and the image
a live ISO carries for the installer.

Shared by ``talos-bake install`` on a host (:mod:`bakery.install`) and the installer a node booted
from the live ISO runs on itself (:mod:`talos_os.install.node`). Nothing here imports the bakery:
the node image carries this package.
"""
