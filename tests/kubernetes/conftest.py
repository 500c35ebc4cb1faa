"""Fixtures for the Kubernetes renderers: real generated configs of one cluster."""

from __future__ import annotations

import pytest

from talos_os.config import MachineConfig, loads
from talos_os.config.generate import GeneratedConfigs, generate
from talos_os.kubernetes.kubeadm import NodeFacts


@pytest.fixture(scope="session")
def generated() -> GeneratedConfigs:
    return generate("demo", "https://10.0.2.15:6443", additional_sans=["demo.example"])


@pytest.fixture(scope="session")
def init_config(generated: GeneratedConfigs) -> MachineConfig:
    return loads(generated.init)


@pytest.fixture(scope="session")
def worker_config(generated: GeneratedConfigs) -> MachineConfig:
    return loads(generated.worker)


@pytest.fixture()
def facts() -> NodeFacts:
    return NodeFacts("node-1", "10.0.2.15")
