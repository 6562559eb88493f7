"""Session-wide real services: one Kafka-protocol broker, one Redis and one Redis Cluster.

Where they come from is decided in :mod:`tests.infra` (environment, Docker,
or the embedded binaries).  Unit tests never touch these fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import infra


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with infra.kafka_service() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with infra.redis_service() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """One node's URL of a 3-primary Redis Cluster, started on first use."""
    with infra.redis_cluster_service() as url:
        yield url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if infra.BACKENDS:
        terminalreporter.write_line(
            "services: " + ", ".join(f"{k}={v}" for k, v in sorted(infra.BACKENDS.items()))
        )
