"""Adapters against real servers: Redis (with AUTH), the metrics endpoint, a schema registry."""

from __future__ import annotations

import asyncio
import http.server
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from driftline.features.definitions import FeatureGroup
from driftline.schemas.registry import SchemaRegistryClient
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.metrics import WorkerMetrics
from driftline.sinks.redis_client import connect_redis
from driftline.streams.local.embedded import EmbeddedRedis
from driftline.streams.sockets import bind_socket
from driftline.streams.worker.web import WebService

AVSC = Path(__file__).resolve().parents[2] / "schemas" / "contracts" / "transactions.avsc"


async def test_redis_auth_from_password() -> None:
    with EmbeddedRedis(password="s3cret") as server:
        bad = connect_redis(server.url)
        with pytest.raises(Exception, match=r"(?i)auth|noauth|hello"):
            await bad.ping()
        await bad.aclose()
        good = connect_redis(server.url, password="s3cret")
        group = FeatureGroup.from_config(
            {
                "name": "g",
                "version": 1,
                "source": "s",
                "entity_key": "id",
                "values": {"x": ["sum"]},
                "windows": ["1m"],
            }
        )
        store = RedisFeatureStore(good, prefix="auth")
        await store.register(group)
        assert (await store.partition_state("s", 0)).offset == -1
        await good.aclose()


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_endpoint_token_and_probes() -> None:
    metrics = WorkerMetrics(["tx"], CollectorRegistry())
    metrics.valid.labels(source="tx").inc(3)
    ready = {"value": False}

    async def readiness():
        return ready["value"], {"redis": ready["value"]}

    sock = bind_socket("127.0.0.1", 0)
    web = WebService(sock=sock, metrics=metrics, readiness=readiness, token="t0ken")
    await web.start()
    base = f"http://127.0.0.1:{web.bound_port}"
    try:
        status, body = await asyncio.to_thread(_get, base + "/metrics")
        assert status == 401
        status, body = await asyncio.to_thread(_get, base + "/metrics", "wrong")
        assert status == 401
        status, body = await asyncio.to_thread(_get, base + "/metrics", "t0ken")
        assert status == 200 and 'driftline_events_valid_total{source="tx"} 3.0' in body
        assert 'driftline_events_invalid_total{reason="oversize",source="tx"} 0.0' in body
        assert (await asyncio.to_thread(_get, base + "/healthz"))[0] == 200
        assert (await asyncio.to_thread(_get, base + "/readyz"))[0] == 503
        ready["value"] = True
        assert (await asyncio.to_thread(_get, base + "/readyz"))[0] == 200
        assert (await asyncio.to_thread(_get, base + "/table"))[0] == 404
    finally:
        await web.stop()
    with pytest.raises(OSError):
        taken = bind_socket("127.0.0.1", 0)
        try:
            bind_socket("127.0.0.1", taken.getsockname()[1])
        finally:
            taken.close()


class _Registry(http.server.BaseHTTPRequestHandler):
    schemas: dict[int, str] = {}
    seen_auth: list[str | None] = []
    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        type(self).seen_auth.append(self.headers.get("Authorization"))
        sid = int(self.path.rsplit("/", 1)[-1])
        if sid in self.schemas:
            body = orjson.dumps({"schema": self.schemas[sid]})
            self.send_response(200)
        else:
            body = b'{"error_code": 40403, "message": "Schema not found"}'
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    _Registry.schemas = {5: AVSC.read_text()}
    _Registry.hits = []
    _Registry.seen_auth = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_schema_registry_client_fetches_and_caches_failures(registry_url: str) -> None:
    client = SchemaRegistryClient(registry_url, username="u", password="p", negative_ttl_s=60)
    contract = client.fetch(5)
    assert contract is not None and contract.schema["name"] == "Transaction"
    assert client.fetch(6) is None
    assert client.fetch(6) is None  # cached: no second request
    assert _Registry.hits == ["/schemas/ids/5", "/schemas/ids/6"]
    assert all(a and a.startswith("Basic ") for a in _Registry.seen_auth)
