"""The module-scoped cluster of the e2e tests: one control plane and two workers (tools/localcluster.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bakery.image import BakeResult
from tools import workload
from tools.localcluster import HELLO, LocalCluster, local_cluster


@pytest.fixture(scope="module")
def cluster(baked_image: BakeResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One control plane and two workers, with the tests' hello image in the loopback registry."""
    work = tmp_path_factory.mktemp("cluster")
    # the Kubernetes tests wait for the API server themselves, so the host-side tests need not
    with local_cluster(baked_image, work, name=f"e2e-{os.getpid()}", wait_api=False) as c:
        if c.registry_port is not None:
            archive = workload.hello_archive(work / "hello", HELLO)
            workload.Registry(c.registry_port).push(archive, HELLO, "hello:1")
        yield c
