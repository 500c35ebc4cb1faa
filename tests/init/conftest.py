"""Fixtures for the node boots: the baked image's boot pieces and a cluster's generated configs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bakery.image import BakeResult
from talos_os.config.generate import generate
from tools.nodevm import NodeImage


@pytest.fixture(scope="session")
def node_image(baked_image: BakeResult) -> NodeImage:
    return NodeImage.from_manifest(baked_image.manifest)


@pytest.fixture(scope="session")
def configs() -> Iterator[dict[str, str]]:
    generated = generate("e2e", "https://10.5.0.2:6443")
    yield {
        "controlplane": generated.controlplane,
        "worker": generated.worker,
        "talosconfig": generated.talosconfig,
    }
