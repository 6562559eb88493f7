"""``driftline features get`` against a real Redis, as model-serving engineers would use it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import connect_redis
from driftline.streams.local.ports import find_free_port
from tests.worker_process import CONTRACTS, run_cli

GROUP = {
    "name": "spend",
    "version": 1,
    "source": "tx",
    "values": {"amount": ["count", "sum"]},
    "last": ["category"],
    "windows": ["5m"],
}


def config(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "driftline.yaml"
    path.write_text(
        f"""
redis: {{key_prefix: {prefix}}}
sources:
  - {{name: tx, topic: tx, schema: {CONTRACTS / "transactions.schema.json"}, entity_key: user_id, event_time: event_time}}
feature_groups:
  - {orjson.dumps(GROUP).decode()}
"""
    )
    return path


async def seed(redis_url: str, prefix: str) -> None:
    group = FeatureGroup.from_config({"entity_key": "user_id", **GROUP})
    client = connect_redis(redis_url)
    events = [
        ParsedEvent(
            "u1", 1_000_000 + i * 1000, {"user_id": "u1", "amount": 2.0, "category": f"c{i}"}
        )
        for i in range(3)
    ]
    try:
        await RedisFeatureStore(client, prefix=prefix).apply(
            "tx",
            0,
            expected_offset=-1,
            new_offset=2,
            watermark_ms=None,
            deltas=[(group, build_deltas(group, events))],
        )
    finally:
        await client.aclose()


def test_features_get_json_and_table(tmp_path: Path, redis_url: str) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:6]}"
    asyncio.run(seed(redis_url, prefix))
    cfg = config(tmp_path, prefix)
    env = {"DRIFTLINE_REDIS__URL": redis_url}
    result = run_cli(
        "features", "get", "-c", str(cfg), "--json", "--as-of", "1002000", "u1", "ghost", env=env
    )
    assert result.returncode == 0, result.stderr
    u1, ghost = (orjson.loads(line) for line in result.stdout.splitlines())
    assert u1["features"] == {"amount_count_5m": 3, "amount_sum_5m": 6.0, "category_last": "c2"}
    assert (u1["as_of_ms"], u1["newest_event_ms"], u1["age_ms"]) == (1_002_000, 1_002_000, 0)
    assert ghost["features"]["amount_count_5m"] == 0 and ghost["newest_event_ms"] is None
    # read 10 minutes later: the 5m window has decayed, the last value has not
    later = run_cli(
        "features", "get", "-c", str(cfg), "--json", "--as-of", "1602000", "u1", env=env
    )
    assert orjson.loads(later.stdout)["features"]["amount_count_5m"] == 0
    table = run_cli("features", "get", "-c", str(cfg), "--as-of", "1002000", "u1", env=env)
    assert (
        table.returncode == 0
        and "amount_sum_5m" in table.stdout
        and "spend v1 / u1" in table.stdout
    )


def test_features_get_errors_are_clear(tmp_path: Path) -> None:
    cfg = config(tmp_path, "x")
    wrong = run_cli("features", "get", "-c", str(cfg), "--group", "nope", "u1")
    assert wrong.returncode == 2 and "no feature group 'nope' (defined: spend)" in wrong.stderr
    down = run_cli(
        "features",
        "get",
        "-c",
        str(cfg),
        "u1",
        env={
            "DRIFTLINE_REDIS__URL": f"redis://127.0.0.1:{find_free_port()}/0",
            "DRIFTLINE_REDIS__SOCKET_TIMEOUT_S": "1",
        },
    )
    assert down.returncode == 2 and "cannot read from Redis" in down.stderr
    assert "Traceback" not in down.stderr
