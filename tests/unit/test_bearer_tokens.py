"""Bearer tokens: any bytes a client sends in ``Authorization`` get a 401, never a 500.

Real servers (serve's uvicorn, the worker's aiohttp) on a local port, spoken to over a raw socket, since no
HTTP client sends a header that is not valid UTF-8 on purpose; attackers do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.security import bearer_matches
from driftline.streams.serve.api import FeatureApi
from driftline.streams.serve.app import build_app
from driftline.streams.sockets import bind_socket
from driftline.streams.worker.web import WebService

TOKEN = "t0ken-é"  # not ASCII: compared as UTF-8 bytes
AUTHORIZATIONS = [
    b"Bearer \xff",
    b"Bearer \xc3",  # a truncated two-byte sequence
    b"\xff\xfe",
    b"Bearer " + TOKEN.encode()[:-1],
    b"Bearer " + TOKEN.encode() + b"\x80",
    b"Bearer " + TOKEN.encode("latin-1"),
    b"Basic dTpw",
    b"",
]


async def _status(port: int, path: str, authorization: bytes | None) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        header = b"" if authorization is None else b"Authorization: " + authorization + b"\r\n"
        writer.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
            + header
            + b"Connection: close\r\n\r\n"
        )  # fmt: skip
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=30)
        await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    return int(status_line.split()[1])


async def _no_registry() -> list[dict[str, Any]]:
    return []


async def _pong() -> bool:
    return True


@pytest.fixture
async def serving_port() -> AsyncIterator[int]:
    """``driftline serve``'s application with a token (no Redis needed for /v1/registry)."""
    api = FeatureApi(cast(Any, None), {}, registry=_no_registry, ping=_pong, token=TOKEN)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(api), log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + 30
    while not server.started:
        assert not task.done() and asyncio.get_running_loop().time() < deadline, "no server"
        await asyncio.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def metrics_port() -> AsyncIterator[int]:
    """The worker's /metrics endpoint with a token."""

    async def readiness() -> tuple[bool, dict[str, Any]]:
        return True, {}

    service = WebService(
        sock=bind_socket("127.0.0.1", 0),
        metrics=WorkerMetrics(["tx"], CollectorRegistry()),
        readiness=readiness,
        token=TOKEN,
    )
    await service.start()
    yield int(service.bound_port)
    await service.stop()


@pytest.mark.parametrize("authorization", AUTHORIZATIONS)
async def test_serve_answers_401_to_any_wrong_authorization(
    serving_port: int, authorization: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert await _status(serving_port, "/v1/registry", authorization) == 401
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("authorization", AUTHORIZATIONS)
async def test_metrics_answers_401_to_any_wrong_authorization(
    metrics_port: int, authorization: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert await _status(metrics_port, "/metrics", authorization) == 401
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_the_right_token_is_accepted_and_none_is_refused(
    serving_port: int, metrics_port: int
) -> None:
    right = b"Bearer " + TOKEN.encode()
    assert await _status(serving_port, "/v1/registry", right) == 200
    assert await _status(metrics_port, "/metrics", right) == 200
    assert await _status(serving_port, "/v1/registry", None) == 401
    assert await _status(metrics_port, "/metrics", None) == 401
    assert await _status(serving_port, "/healthz", b"Bearer \xff") == 200  # probes need none


def test_bearer_matches_compares_the_raw_bytes() -> None:
    assert bearer_matches("Bearer abc", b"abc")
    assert not bearer_matches("Bearer abd", b"abc")
    assert not bearer_matches(None, b"abc")
    assert bearer_matches(b"Bearer \xff".decode("utf-8", "surrogateescape"), b"\xff")
    assert not bearer_matches("Bearer \ud800", b"abc")  # no bytes decode to this
