"""Session-wide real services: one Kafka-protocol broker and one Redis for the run.

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if infra.BACKENDS:
        terminalreporter.write_line(
            "services: " + ", ".join(f"{k}={v}" for k, v in sorted(infra.BACKENDS.items()))
        )
