"""The setuptools hook that puts the node API stubs into every built wheel.

The stubs (``talos_os/api/gen``) are build output, never committed: ``build_py`` generates them from
``node.proto`` into the build tree, so ``pip install .`` (or any wheel) gives a working osctl
without ``make proto``. A source checkout used in place (``pip install -e``) runs ``make proto``.
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    """``build_py``, then the stubs into ``build_lib`` (grpcio-tools is a build requirement)."""

    def run(self) -> None:
        super().run()
        sys.path.insert(0, str(ROOT))
        from talos_os.api.build import generate

        generate(ROOT / "talos_os" / "api", Path(self.build_lib) / "talos_os" / "api" / "gen", force=True)


setup(cmdclass={"build_py": BuildPyWithStubs})
