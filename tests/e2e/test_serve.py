"""``driftline serve`` as a process against a real Redis: every route, the errors, the token.

Redis is seeded through ``RedisFeatureStore.apply`` and ``register`` (what the
worker does), so the API reads exactly what a worker writes.  Two servers run
for the module: ``open`` (no token, small limits: 3 entities, 2 KiB bodies)
and ``locked`` (a bearer token, default limits).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import connect_redis
from driftline.streams.local.ports import find_free_port
from driftline.streams.serve.api import FeatureApi
from driftline.streams.serve.app import _document, build_app, served_routes
from tests.worker_process import CONTRACTS, ROOT

T = 1_700_000_000_000  # "now" of the seeded data (epoch ms)
TOKEN = "s3cret-serving-token"
SPEND = {
    "name": "spend",
    "version": 2,
    "source": "tx",
    "description": "Spending of a user",
    "owner": "risk-team",
    "tags": ["payments", "pii-free"],
    "values": {"amount": ["count", "sum", "mean"]},
    "distinct": ["country"],
    "last": ["category"],
    "windows": ["1m", "5m"],
}
SPEND_V1 = {
    "name": "spend",
    "version": 1,
    "source": "tx",
    "values": {"amount": ["count"]},
    "windows": ["5m"],
}
LEGACY = {
    "name": "legacy",
    "version": 3,
    "source": "tx",
    "values": {"amount": ["max"]},
    "windows": ["1h"],
}
NAMES = [
    "amount_count_1m", "amount_count_5m", "amount_sum_1m", "amount_sum_5m",
    "amount_mean_1m", "amount_mean_5m", "country_distinct_count_1m",
    "country_distinct_count_5m", "category_last",
]  # fmt: skip


def group(config: dict[str, Any]) -> FeatureGroup:
    return FeatureGroup.from_config({"entity_key": "user_id", **config})


def event(entity: str, t: int, **fields: Any) -> ParsedEvent:
    return ParsedEvent(entity, t, {"user_id": entity, **fields})


EVENTS = [
    event("u1", T - 10_000, amount=2.0, country="DE", category="food"),
    event("u1", T - 5_000, amount=4.0, country="FR"),
    event("u1", T, amount=6.0, category="travel"),
    event("u2", T - 200_000, amount=10.0, country="DE", category="fuel"),
    event("u3", T - 1_000, country="NL"),  # no amount: amount features stay empty
    event("a/b c", T, amount=1.0),  # an entity key with "/" and a space
]


async def seed(redis_url: str, prefix: str) -> None:
    client = connect_redis(redis_url)
    store = RedisFeatureStore(client, prefix=prefix)
    try:
        for config in (SPEND_V1, LEGACY, SPEND):
            await store.register(group(config))
        spend = group(SPEND)
        await store.apply(
            "tx",
            0,
            expected_offset=-1,
            new_offset=len(EVENTS) - 1,
            watermark_ms=None,
            deltas=[(spend, build_deltas(spend, EVENTS))],
        )
    finally:
        await client.aclose()


def write_config(path: Path, prefix: str, port: int, **serve: Any) -> Path:
    source = {
        "name": "tx",
        "topic": "transactions",
        "schema": str(CONTRACTS / "transactions.schema.json"),
        "entity_key": "user_id",
        "event_time": "event_time",
    }
    config = {
        "redis": {"key_prefix": prefix, "socket_timeout_s": 1},
        "serve": {"host": "127.0.0.1", "port": port, **serve},
        "sources": [source],
        "feature_groups": [SPEND],
    }
    path.write_bytes(orjson.dumps(config))  # JSON is YAML
    return path


class Server:
    """``python -m driftline.streams.serve.cli serve -c FILE`` on a free loopback port."""

    def __init__(self, tmp: Path, prefix: str, redis_url: str, token: str | None, **serve: Any):
        self.port = find_free_port()
        self.config = write_config(tmp / f"serve-{self.port}.yaml", prefix, self.port, **serve)
        self.log_path = tmp / f"serve-{self.port}.log"
        env = {**os.environ, "DRIFTLINE_REDIS__URL": redis_url}
        env.pop("DRIFTLINE_SERVE__TOKEN", None)
        if token is not None:
            env["DRIFTLINE_SERVE__TOKEN"] = token
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "driftline.streams.serve.cli",
                    "serve",
                    "-c",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 30
        while self.call("GET", "/healthz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"serve did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        token: str | None = None,
    ) -> tuple[int, Message, Any]:
        data = orjson.dumps(body) if isinstance(body, dict) else body
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, exc.headers, exc.read()
        except OSError:
            return 0, Message(), None
        if raw and not headers.get("Content-Type", "").startswith("application/json"):
            return status, headers, raw.decode()  # /metrics: Prometheus text
        return status, headers, orjson.loads(raw) if raw else None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def prefix(redis_url: str) -> str:
    value = f"serve-{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(redis_url, value))
    return value


@pytest.fixture(scope="module")
def open_server(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, prefix: str
) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("open"),
        prefix,
        redis_url,
        None,
        max_batch_entities=3,
        max_body_bytes=2048,
    )
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def locked_server(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, prefix: str
) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("locked"), prefix, redis_url, TOKEN)
    yield server
    server.stop()


def conforms(document: dict[str, Any], schema_name: str, instance: Any) -> None:
    """``instance`` is valid against ``#/components/schemas/<schema_name>`` of the document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(instance)]
    assert not errors, (schema_name, errors)


# ------------------------------------------------------------------ features


def test_one_entity_values_and_freshness(open_server: Server) -> None:
    status, headers, doc = open_server.call("GET", f"/v1/features/spend/u1?as_of={T}")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert (doc["group"], doc["version"], doc["entity"]) == ("spend", 2, "u1")
    assert (doc["as_of_ms"], doc["newest_event_ms"]) == (T, T)
    assert list(doc["features"]) == NAMES
    assert doc["features"] == {
        "amount_count_1m": 3, "amount_count_5m": 3, "amount_sum_1m": 12.0, "amount_sum_5m": 12.0,
        "amount_mean_1m": 4.0, "amount_mean_5m": 4.0, "country_distinct_count_1m": 2,
        "country_distinct_count_5m": 2, "category_last": "travel",
    }  # fmt: skip
    assert set(doc["freshness"].values()) == {"fresh"}
    conforms(open_server.call("GET", "/openapi.json")[2], "FeatureVector", doc)

    # u2's only event is 200 s old: outside 1m (empty), inside 5m (fresh)
    u2 = open_server.call("GET", f"/v1/features/spend/u2?as_of={T}")[2]
    assert u2["features"]["amount_count_1m"] == 0 and u2["features"]["amount_mean_1m"] is None
    assert u2["freshness"]["amount_count_1m"] == "empty"
    assert u2["features"]["amount_count_5m"] == 1 and u2["freshness"]["amount_mean_5m"] == "fresh"
    assert u2["freshness"]["category_last"] == "fresh"

    # u3 has a country but no amount: freshness is per source field
    u3 = open_server.call("GET", f"/v1/features/spend/u3?as_of={T}")[2]
    assert u3["freshness"]["country_distinct_count_1m"] == "fresh"
    assert u3["freshness"]["amount_count_1m"] == "empty" and u3["features"]["amount_sum_1m"] == 0.0
    assert u3["features"]["category_last"] is None and u3["freshness"]["category_last"] == "empty"

    # 400 s later every window has decayed; last values outlive the longest window: stale
    later = open_server.call("GET", f"/v1/features/spend/u1?as_of={T + 400_000}")[2]
    assert (
        later["features"]["amount_count_5m"] == 0 and later["features"]["category_last"] == "travel"
    )
    assert later["freshness"]["amount_count_5m"] == "empty"
    assert later["freshness"]["category_last"] == "stale"


def test_missing_entity_is_an_explicit_empty_result(open_server: Server) -> None:
    status, _, doc = open_server.call("GET", "/v1/features/spend/nobody")
    assert status == 200 and doc["newest_event_ms"] is None
    assert abs(doc["as_of_ms"] - time.time() * 1000) < 60_000  # default: now
    assert doc["features"]["amount_count_5m"] == 0 and doc["features"]["amount_sum_5m"] == 0.0
    assert doc["features"]["amount_mean_5m"] is None and doc["features"]["category_last"] is None
    assert set(doc["freshness"].values()) == {"empty"}


def test_feature_selection_and_entity_keys_with_slashes(open_server: Server) -> None:
    path = f"/v1/features/spend/u1?as_of={T}&features=category_last,amount_count_1m,category_last"
    doc = open_server.call("GET", path)[2]
    assert doc["features"] == {"category_last": "travel", "amount_count_1m": 3}
    assert list(doc["freshness"]) == ["category_last", "amount_count_1m"]
    repeated = f"/v1/features/spend/u1?as_of={T}&features=category_last&features=amount_count_1m"
    assert open_server.call("GET", repeated)[2]["features"] == doc["features"]
    for raw in ("a%2Fb%20c", "a/b%20c"):
        got = open_server.call("GET", f"/v1/features/spend/{raw}?as_of={T}&features=amount_sum_1m")
        assert got[0] == 200 and got[2]["entity"] == "a/b c"
        assert got[2]["features"] == {"amount_sum_1m": 1.0}


def test_window_selection(open_server: Server) -> None:
    doc = open_server.call("GET", f"/v1/features/spend/u1?as_of={T}&windows=5m")[2]
    assert list(doc["features"]) == [n for n in NAMES if n.endswith("_5m")]  # no last value
    both = f"/v1/features/spend/u1?as_of={T}&windows=1m&features=amount_count_1m,amount_sum_5m"
    assert list(open_server.call("GET", both)[2]["features"]) == ["amount_count_1m"]
    body = {"entities": ["u1", "u2"], "windows": ["1m", "5m"], "as_of_ms": T}
    status, _, batch = open_server.call("POST", "/v1/features/spend:batch", body)
    assert status == 200 and list(batch["results"][0]["features"]) == NAMES[:-1]
    conforms(open_server.call("GET", "/openapi.json")[2], "BatchResponse", batch)


def test_batch_in_request_order(open_server: Server) -> None:
    body = {
        "entities": ["u2", "u3", "u1"],
        "features": ["amount_count_5m", "category_last"],
        "as_of_ms": T,
    }
    status, _, doc = open_server.call("POST", "/v1/features/spend:batch", body)
    assert status == 200
    assert (doc["group"], doc["version"], doc["as_of_ms"]) == ("spend", 2, T)
    assert [r["entity"] for r in doc["results"]] == ["u2", "u3", "u1"]
    assert [r["features"]["amount_count_5m"] for r in doc["results"]] == [1, 0, 3]
    assert [r["newest_event_ms"] for r in doc["results"]][::2] == [T - 200_000, T]
    conforms(open_server.call("GET", "/openapi.json")[2], "BatchResponse", doc)
    # an unknown entity read now: empty; read in the past: its events may have expired
    now = open_server.call("POST", "/v1/features/spend:batch", {**body, "as_of_ms": None})
    assert now[0] == 200 and [r["entity"] for r in now[2]["results"]] == ["u2", "u3", "u1"]
    ghost = {**body, "entities": ["u2", "ghost"]}
    status, _, doc = open_server.call("POST", "/v1/features/spend:batch", ghost)
    assert status == 409, doc  # serve has no offline log here to answer it from
    assert "before the newest stored event of entity 'ghost' (or it has none)" in doc["error"]
    assert "no offline log of source" in doc["error"]
    status, _, doc = open_server.call(
        "POST", "/v1/features/spend:batch", {**ghost, "as_of_ms": None}
    )
    assert status == 200
    assert doc["results"][1]["newest_event_ms"] is None
    assert doc["results"][1]["freshness"] == {"amount_count_5m": "empty", "category_last": "empty"}
    # all features by default, integer keys as strings, at the limit of 3
    everything = open_server.call(
        "POST", "/v1/features/spend:batch", {"entities": ["u1", 7, "u3"]}
    )[2]
    assert [r["entity"] for r in everything["results"]] == ["u1", "7", "u3"]
    assert list(everything["results"][0]["features"]) == NAMES


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v1/features/nope/u1", None, 404, "unknown feature group 'nope' (served: spend)"),
        (
            "POST",
            "/v1/features/nope:batch",
            {"entities": ["u1"]},
            404,
            "unknown feature group 'nope'",
        ),
        (
            "GET",
            "/v1/features/spend/u1?features=amount_cout_1m",
            None,
            400,
            "did you mean 'amount_count_1m'",
        ),
        ("GET", "/v1/features/spend/u1?features=", None, 400, "at least one feature"),
        (
            "GET",
            "/v1/features/spend/u1?as_of=yesterday",
            None,
            400,
            "as_of: Input should be a valid integer",
        ),
        ("GET", "/v1/features/spend/u1?as_of=-5", None, 400, "as_of: Input should be greater"),
        ("GET", "/v1/features/spend/u1?as_of=1e12", None, 400, "as_of: Input should be a valid"),
        ("GET", "/v1/features/spend/u1?as_of=99999999999999999999", None, 400, "as_of: Input"),
        ("POST", "/v1/features/spend:batch", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/features/spend:batch", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/v1/features/spend:batch", {"entity": ["u1"]}, 400, "unknown key 'entity'"),
        (
            "POST",
            "/v1/features/spend:batch",
            {"entities": []},
            400,
            "entities: List should have at least 1",
        ),
        ("POST", "/v1/features/spend:batch", {"entities": ["u1", True]}, 400, "entities[1]"),
        ("POST", "/v1/features/spend:batch", {"entities": [""]}, 400, "entities[0]"),
        (
            "POST",
            "/v1/features/spend:batch",
            {"entities": ["u1"], "features": "amount_count_1m"},
            400,
            "features: Input should be a valid list",
        ),
        (
            "POST",
            "/v1/features/spend:batch",
            {"entities": ["u1"], "features": ["bogus"]},
            400,
            "unknown feature(s) of group 'spend': bogus",
        ),
        (
            "POST",
            "/v1/features/spend:batch",
            {"entities": ["u1"], "as_of_ms": "now"},
            400,
            "as_of_ms: Input should be a valid integer",
        ),
        (
            "POST",
            "/v1/features/spend:batch",
            {"entities": ["a", "b", "c", "d"]},
            413,
            "at most 3 entities per batch, got 4",
        ),
        (
            "POST",
            "/v1/features/spend:batch",
            {"entities": ["x" * 3000]},
            413,
            "the body is larger than 2048 bytes",
        ),
        ("GET", "/v1/features/spend/u1?windows=2m", None, 400, "unknown window(s) of group"),
        (
            "GET",
            "/v1/features/spend/u1?windows=1m&features=amount_sum_5m",
            None,
            400,
            "no requested feature is over the requested windows",
        ),
        (
            "POST",
            "/v1/features/spend:batch",
            {"entities": ["u1"], "windows": "5m"},
            400,
            "windows: Input should be a valid list",
        ),
        ("GET", "/v1/nothing", None, 404, "no route GET /v1/nothing"),
        ("GET", "/stats", None, 404, "no route GET /stats"),
        ("POST", "/healthz", b"", 405, "method POST is not allowed on /healthz"),
        ("GET", "/v1/features/spend:batch", None, 405, "method GET is not allowed"),
    ],
)
def test_errors_are_json(
    open_server: Server, method: str, path: str, body: Any, status: int, message: str
) -> None:
    got, _, doc = open_server.call(method, path, body)
    assert (got, doc["status"]) == (status, status), doc
    assert message in doc["error"], doc
    conforms(open_server.call("GET", "/openapi.json")[2], "Error", doc)


# ------------------------------------------------------------------ token, probes


def test_token_guards_v1_only(open_server: Server, locked_server: Server) -> None:
    for path, method, body in (
        ("/v1/features/spend/u1", "GET", None),
        ("/v1/features/spend:batch", "POST", {"entities": ["u1"]}),
        ("/v1/registry", "GET", None),
        ("/v1/no-such-route", "GET", None),  # no route enumeration without the token
    ):
        for token in (None, "wrong", TOKEN[:-1]):
            status, headers, doc = locked_server.call(method, path, body, token=token)
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer", (path, token)
            assert doc == {"error": "missing or wrong bearer token", "status": 401}
    assert locked_server.call("GET", "/v1/features/spend/u1", token=TOKEN)[0] == 200
    assert (
        locked_server.call("POST", "/v1/features/spend:batch", {"entities": ["u1"]}, TOKEN)[0]
        == 200
    )
    assert locked_server.call("GET", "/v1/registry", token=TOKEN)[0] == 200
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert locked_server.call("GET", path)[0] == 200
    assert open_server.call("GET", "/v1/features/spend/u1")[0] == 200  # no token configured
    assert TOKEN not in locked_server.log() and "required on /v1" in locked_server.log()
    # the document says so too
    secured = locked_server.call("GET", "/openapi.json")[2]["paths"]["/v1/registry"]["get"]
    assert secured["security"] == [{"bearerAuth": []}] and "401" in secured["responses"]
    public = open_server.call("GET", "/openapi.json")[2]["paths"]["/v1/registry"]["get"]
    assert public.get("security", []) == [] and "401" not in public["responses"]


def test_probes(open_server: Server) -> None:
    status, _, doc = open_server.call("GET", "/healthz")
    assert (status, doc) == (200, {"status": "ok"})
    status, _, doc = open_server.call("GET", "/readyz")
    assert (status, doc) == (200, {"ready": True, "redis": "ok"})


def test_redis_down_gives_503_not_a_crash(tmp_path: Path) -> None:
    down = f"redis://127.0.0.1:{find_free_port()}/0"
    server = Server(tmp_path, "x", down, None)
    try:
        assert server.call("GET", "/healthz")[0] == 200
        status, _, doc = server.call("GET", "/readyz")
        assert status == 503 and doc["ready"] is False
        status, _, doc = server.call("GET", "/v1/features/spend/u1")
        assert status == 503 and "feature store unavailable" in doc["error"]
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0, server.log()


# ------------------------------------------------------------------ OpenAPI


def test_openapi_is_valid_and_matches_the_routes(open_server: Server) -> None:
    status, _, document = open_server.call("GET", "/openapi.json")
    assert status == 200 and document["openapi"] == "3.1.0"
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)  # raises on an invalid document
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    # the routes the application really has (built in-process, nothing started)
    api = FeatureApi(_NoStore(), {"spend": group(SPEND)}, registry=_nothing, ping=_nothing)
    assert served_routes(build_app(api)) == documented
    # and over the wire: every documented operation is routed, nothing else under /v1
    for method, path in documented:
        concrete = path.replace("{group}", "spend").replace("{entity}", "u1")
        body = {"entities": ["u1"]} if method == "POST" else None
        got = open_server.call(method, concrete, body)
        assert got[0] == 200, (method, path, got)
    schema_of = {
        "/v1/registry": "Registry",
        "/healthz": "Health",
        "/readyz": "Ready",
    }
    for path, name in schema_of.items():
        conforms(document, name, open_server.call("GET", path)[2])
    # the served document is this deployment's: generated from the same models and limits
    here = FeatureApi(
        _NoStore(),
        {"spend": group(SPEND)},
        registry=_nothing,
        ping=_nothing,
        max_batch_entities=3,
        max_body_bytes=2048,
    )
    assert document == _document(build_app(here))
    batch = document["paths"]["/v1/features/{group}:batch"]["post"]
    assert "At most 3 entities and 2048 bytes" in batch["description"]
    assert "422" not in batch["responses"] and "413" in batch["responses"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


class _NoStore:
    async def read(self, group: FeatureGroup, entities: Any, as_of_ms: int) -> list[Any]:
        raise AssertionError("not called")


async def _nothing() -> Any:
    return []


# ------------------------------------------------------------------ registry


def test_registry_lists_active_and_retired_versions(open_server: Server, prefix: str) -> None:
    status, _, doc = open_server.call("GET", "/v1/registry")
    assert status == 200
    by_version = {(e["name"], e["version"]): e for e in doc["groups"]}
    assert list(by_version) == [("legacy", 3), ("spend", 2), ("spend", 1)]
    active = by_version[("spend", 2)]
    assert (active["status"], active["owner"], active["tags"]) == (
        "active",
        "risk-team",
        ["payments", "pii-free"],
    )
    assert active["description"] == "Spending of a user" and active["warnings"] == []
    assert abs(active["first_deployed_ms"] - time.time() * 1000) < 600_000
    assert active["fingerprint"] == group(SPEND).fingerprint()
    features = {f["name"]: f for f in active["features"]}
    assert list(features) == NAMES
    assert features["amount_mean_1m"] == {
        "name": "amount_mean_1m", "kind": "value", "value_type": "number|null",
        "aggregation": "mean", "window": "1m", "window_ms": 60_000, "source_field": "amount",
    }  # fmt: skip
    assert features["country_distinct_count_5m"]["value_type"] == "integer"
    assert features["category_last"]["value_type"] == "string|null"
    contract = CONTRACTS / "transactions.schema.json"
    fingerprint = "sha256:" + hashlib.sha256(contract.read_bytes()).hexdigest()
    lineage = active["lineage"]
    assert lineage["topic"] == "transactions" and lineage["fields"] == [
        "amount",
        "country",
        "category",
    ]
    assert lineage["schema"] == {
        "file": "transactions.schema.json", "encoding": "json", "fingerprint": fingerprint, "schema_ids": {},
    }  # fmt: skip
    assert lineage["redis_key_space"] == f"{prefix}:fg:spend:v2:*"
    assert (lineage["entity_key"], lineage["event_time"]) == ("user_id", "event_time")
    assert lineage["path"].startswith("transactions → transactions.schema.json (sha256:")

    retired = by_version[("spend", 1)]
    assert retired["status"] == "retired" and retired["lineage"]["schema"] is None
    assert [f["name"] for f in retired["features"]] == ["amount_count_5m"]
    assert retired["lineage"]["redis_key_space"] == f"{prefix}:fg:spend:v1:*"
    gone = by_version[("legacy", 3)]
    assert gone["status"] == "retired" and gone["topic"] == "transactions"
    assert [f["name"] for f in gone["features"]] == ["amount_max_1h"]


def test_registry_command_json_and_table(open_server: Server, redis_url: str) -> None:
    env = {**os.environ, "DRIFTLINE_REDIS__URL": redis_url}
    base = [
        sys.executable,
        "-m",
        "driftline.streams.serve.cli",
        "registry",
        "-c",
        str(open_server.config),
    ]
    as_json = subprocess.run(
        [*base, "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert as_json.returncode == 0, as_json.stderr
    assert orjson.loads(as_json.stdout) == open_server.call("GET", "/v1/registry")[2]
    table = subprocess.run(base, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "GROUP",
        "VERSION",
        "STATUS",
        "SOURCE",
        "FEATURES",
        "FIRST",
        "DEPLOYED",
        "FINGERPRINT",
    ]
    assert lines[1].split()[:5] == ["legacy", "3", "retired", "tx", "1"]
    assert lines[2].split()[:5] == ["spend", "2", "active", "tx", "9"]
    assert (
        "spend v1 (retired)" in table.stdout
        and "owner risk-team; tags payments, pii-free" in table.stdout
    )
    assert "  lineage  transactions → transactions.schema.json (sha256:" in table.stdout


def test_user_errors_exit_2_without_traceback(tmp_path: Path, open_server: Server) -> None:
    clash = write_config(tmp_path / "clash.yaml", "x", open_server.port)
    result = subprocess.run(
        [sys.executable, "-m", "driftline.streams.serve.cli", "serve", "-c", str(clash)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert (
        result.returncode == 2 and f"cannot listen on 127.0.0.1:{open_server.port}" in result.stderr
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        clash.read_text().replace('"max_body_bytes"', '"max_body_byte"').replace('"port"', '"prot"')
    )
    result = subprocess.run(
        [sys.executable, "-m", "driftline.streams.serve.cli", "registry", "-c", str(bad)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert (
        result.returncode == 2 and "serve.prot: unknown key (did you mean 'port'?)" in result.stderr
    )
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------ FeatureClient

CLIENT_FEATURES = ["spend:amount_mean_5m", "spend:category_last", "spend:amount_count_1m"]


def test_feature_client_over_redis_and_over_http_give_the_served_answer(
    open_server: Server, locked_server: Server, redis_url: str, prefix: str
) -> None:
    from driftline import FeatureClient, FeatureClientError

    served = [
        open_server.call("GET", f"/v1/features/spend/{entity}?as_of={T}")[2]
        for entity in ("u1", "u2", "u3")
    ]
    clients = [
        FeatureClient.redis(redis_url, prefix=prefix),  # the registry's highest version: v2
        FeatureClient.http(f"http://127.0.0.1:{open_server.port}"),
        FeatureClient.http(f"http://127.0.0.1:{locked_server.port}", token=TOKEN),
    ]
    try:
        answers = [
            c.get_online_features(["u1", "u2", "u3"], CLIENT_FEATURES, as_of_ms=T) for c in clients
        ]
        # a past read neither can answer exactly is refused by every reader alike
        for c in clients:
            with pytest.raises(FeatureClientError, match="or it has none"):
                c.get_online_features(["u1", "nobody"], CLIENT_FEATURES, as_of_ms=T)
    finally:
        for c in clients:
            c.close()
    for rows in answers:
        assert [r.entity for r in rows] == ["u1", "u2", "u3"]
        for row, doc in zip(rows, served, strict=True):
            assert row.as_of_ms == T
            assert list(row.values) == CLIENT_FEATURES  # in the order asked
            for ref in CLIENT_FEATURES:
                name = ref.split(":", 1)[1]
                assert row.values[ref] == doc["features"][name], (ref, row)
                assert row.freshness[ref] == doc["freshness"][name], (ref, row)
            assert row.newest_event_ms == {"spend": doc["newest_event_ms"]}
    assert answers[0][0].values["spend:amount_mean_5m"] == 4.0
    assert answers[0][2].freshness["spend:category_last"] == "empty"


async def test_async_feature_client_reads_a_pinned_version_and_explains_mistakes(
    open_server: Server, redis_url: str, prefix: str
) -> None:
    from driftline import AsyncFeatureClient, FeatureClientError

    async with AsyncFeatureClient.redis(redis_url, prefix=prefix, versions={"spend": 1}) as client:
        # version 1 has no data under this prefix: empty (read now), not an error
        [row] = await client.get_online_features(["u1"], ["spend:amount_count_5m"])
        assert row.values == {"spend:amount_count_5m": 0}
        assert row.freshness == {"spend:amount_count_5m": "empty"}
        with pytest.raises(FeatureClientError, match=r"unknown feature.*amount_mean_1h"):
            await client.get_online_features(["u1"], ["spend:amount_mean_1h"])
        with pytest.raises(FeatureClientError, match="'nosuch' is not in the registry"):
            await client.get_online_features(["u1"], ["nosuch:x"])
        with pytest.raises(FeatureClientError, match="group:feature"):
            await client.get_online_features(["u1"], ["amount_mean_5m"])
    async with AsyncFeatureClient.http(f"http://127.0.0.1:{open_server.port}") as http:
        with pytest.raises(FeatureClientError, match="HTTP 404"):
            await http.get_online_features(["u1"], ["nosuch:x"])


def test_serve_exports_request_metrics_by_route_template(
    open_server: Server, locked_server: Server
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert open_server.call("GET", f"/v1/features/spend/u1?as_of={T}")[0] == 200
    assert open_server.call("GET", "/v1/features/nosuch/u1")[0] == 404
    status, headers, text = open_server.call("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    counts = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "driftline_serve_requests_total"
    }
    assert counts[("/v1/features/{group}/{entity}", "GET", "200")] >= 1
    assert counts[("/v1/features/{group}/{entity}", "GET", "404")] >= 1
    assert not any("u1" in route for route, _, _ in counts)  # entity keys are never labels
    assert "driftline_serve_request_seconds_bucket" in text
    assert locked_server.call("GET", "/metrics")[0] == 401  # the serving token guards it too
    assert locked_server.call("GET", "/metrics", token=TOKEN)[0] == 200


def test_an_explicit_version_is_served_and_an_unconfigured_one_is_a_404(
    open_server: Server,
) -> None:
    document = open_server.call("GET", "/openapi.json")[2]
    params = document["paths"]["/v1/features/{group}/{entity}"]["get"]["parameters"]
    assert "version" in {p["name"] for p in params}
    status, _, doc = open_server.call("GET", f"/v1/features/spend/u1?as_of={T}&version=2")
    assert status == 200 and doc["version"] == 2
    conforms(document, "FeatureVector", doc)
    status, _, doc = open_server.call(
        "POST", "/v1/features/spend:batch", {"entities": ["u1"], "as_of_ms": T, "version": 2}
    )
    assert status == 200 and doc["version"] == 2
    conforms(document, "BatchResponse", doc)
    # v1 is recorded in Redis (retired), but this server's config does not describe it
    for method, path, body in (
        ("GET", "/v1/features/spend/u1?version=1", None),
        ("POST", "/v1/features/spend:batch", {"entities": ["u1"], "version": 1}),
    ):
        status, _, error = open_server.call(method, path, body)
        assert (status, error) == (
            404,
            {"error": "feature group 'spend' has no version 1 here (configured: 2)", "status": 404},
        )
        conforms(document, "Error", error)
    status, _, error = open_server.call("GET", "/v1/features/spend/u1?version=0")
    assert status == 400, error
