"""Session-wide real servers: one local cluster and one Prometheus per test session.

They start lazily, only when a test asks for them, so `pytest tests/unit` starts nothing.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import kubernetes
import pytest

from canarist.devstack.stack import LocalStack


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (CI timeouts, `kill`) must tear the stack down like Ctrl-C does.
    def _interrupt(*_):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    # CANARIST_TEST_STACK lets two test runs on one machine use separate stacks.
    with LocalStack(os.environ.get("CANARIST_TEST_STACK", "canarist-test")) as running:
        yield running


@pytest.fixture(scope="session")
def kube_client(stack: LocalStack) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(stack.kubeconfig))


@pytest.fixture
def namespace(kube_client: kubernetes.client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    core = kubernetes.client.CoreV1Api(kube_client)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"canarist.dev/test": "true"}}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")
