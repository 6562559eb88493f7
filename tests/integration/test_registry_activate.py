"""``driftline registry activate`` on a real Redis: each refusal, --force, success, no-op."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from driftline.features.definitions import FeatureGroup
from driftline.features.registry import BackfillProgress, version_record
from driftline.sinks.feature_store import RedisFeatureStore, registry_key
from driftline.sinks.redis_client import connect_redis
from driftline.streams.cli.main import main
from tests.worker_process import CONTRACTS

V1: dict[str, Any] = {
    "name": "spend",
    "version": 1,
    "source": "tx",
    "values": {"amount": ["count"]},
    "windows": ["5m"],
}
V2: dict[str, Any] = {**V1, "version": 2, "values": {"amount": ["count", "sum"]}}


def group(config: dict[str, Any]) -> FeatureGroup:
    return FeatureGroup.from_config({"entity_key": "user_id", **config})


def write_config(path: Path, prefix: str, *groups: dict[str, Any]) -> Path:
    source = {
        "name": "tx",
        "topic": "transactions",
        "schema": str(CONTRACTS / "transactions.schema.json"),
        "entity_key": "user_id",
        "event_time": "event_time",
    }
    config = {"redis": {"key_prefix": prefix}, "sources": [source], "feature_groups": list(groups)}
    path.write_bytes(orjson.dumps(config))  # JSON is YAML
    return path


class Registry:
    """The registry hash of ``spend`` under a fresh prefix, written as workers write it."""

    def __init__(self, redis_url: str) -> None:
        self.url = redis_url
        self.prefix = f"act-{uuid.uuid4().hex[:8]}"
        self.key = registry_key(self.prefix, "spend")

    def run(self, coro_fn: Any) -> Any:
        async def go() -> Any:
            client = connect_redis(self.url)
            try:
                return await coro_fn(client)
            finally:
                await client.aclose()

        return asyncio.run(go())

    def register(self, config: dict[str, Any]) -> None:
        """What a worker starting with ``config`` records (first deployment: now)."""

        async def go(client: Any) -> None:
            await RedisFeatureStore(client, prefix=self.prefix).register(group(config))

        self.run(go)

    def hset(self, field: str, value: bytes | str) -> None:
        self.run(lambda client: client.hset(self.key, field, value))

    def active(self) -> bytes | None:
        value: bytes | None = self.run(lambda client: client.hget(self.key, "active"))
        return value


@pytest.fixture
def reg(redis_url: str) -> Registry:
    return Registry(redis_url)


def activate(config: Path, redis_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main,
        ["registry", "activate", "-c", str(config), *args],
        env={"DRIFTLINE_REDIS__URL": redis_url},
    )


def refused(result: Result, *parts: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.exception is not None
    for part in parts:
        assert part in result.stderr, (part, result.stderr)


def test_versions_not_configured_or_not_deployed_are_refused(
    tmp_path: Path, redis_url: str, reg: Registry
) -> None:
    config = write_config(tmp_path / "c.yaml", reg.prefix, V1, V2)
    refused(
        activate(config, redis_url, "spend", "3"),
        f"cannot activate spend v3: it is not in {config} (configured: v1, v2)",
    )
    refused(
        activate(config, redis_url, "clicks", "1"),
        "no feature group 'clicks' in",
        "(configured: spend)",
    )
    reg.register(V1)
    refused(
        activate(config, redis_url, "spend", "2"),
        "cannot activate spend v2: it is not deployed (no worker has recorded it in Redis",
    )
    # v2 recorded with another definition than the config's
    other = group({**V2, "windows": ["1h"]})
    reg.hset("v2", orjson.dumps(version_record(other, 1)))
    refused(
        activate(config, redis_url, "spend", "2", "--force"),
        "cannot activate spend v2: it is deployed with another definition",
    )
    assert reg.active() is None  # nothing was written


def test_a_version_not_ready_is_refused_unless_forced(
    tmp_path: Path, redis_url: str, reg: Registry
) -> None:
    config = write_config(tmp_path / "c.yaml", reg.prefix, V1, V2)
    reg.register(V1)
    reg.register(V2)  # deployed just now: warming for the group's TTL
    refused(
        activate(config, redis_url, "spend", "2"),
        "cannot activate spend v2: not ready (warming: ready by itself at ",
        "run driftline backfill --group spend --version 2 to make it ready sooner",
        "--force",
    )
    now = int(time.time() * 1000)
    running = BackfillProgress("running", 1_234_567, 3_400_000, now - 86_400_000, now, now)
    reg.hset("v2:backfill", orjson.dumps(running.as_dict()))
    refused(
        activate(config, redis_url, "spend", "2"),
        "not ready (backfill running: 1.2M of 3.4M events)",
    )
    assert reg.active() is None

    forced = activate(config, redis_url, "spend", "2", "--force")
    assert forced.exit_code == 0, forced.output
    assert reg.active() == b"2"
    assert forced.stdout.splitlines() == [
        "spend: active version v1 -> v2 (serve replicas and FeatureClient read it within a second)",
        "--force: activated although not ready (backfill running: 1.2M of 3.4M events)",
        f"switch back with: driftline registry activate -c {config} spend 1 (instant: v1 is "
        "written until it leaves the config)",
    ]  # v1 was deployed just now too, but it was served and is still written: ready
    listed = CliRunner().invoke(
        main, ["registry", "-c", str(config), "--json"], env={"DRIFTLINE_REDIS__URL": redis_url}
    )
    assert listed.exit_code == 0, listed.output
    statuses = {g["version"]: g["status"] for g in orjson.loads(listed.stdout)["groups"]}
    assert statuses == {2: "active", 1: "ready"}
    back = activate(config, redis_url, "spend", "1")  # no --force needed to switch back
    assert back.exit_code == 0, back.output
    assert reg.active() == b"1"
    forced = activate(config, redis_url, "spend", "2", "--force")
    assert forced.exit_code == 0, forced.output

    again = activate(config, redis_url, "spend", "2")
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "spend v2 is already the active version; nothing changed"
    assert reg.active() == b"2"


def test_a_ready_version_is_activated_and_can_be_switched_back(
    tmp_path: Path, redis_url: str, reg: Registry
) -> None:
    config = write_config(tmp_path / "c.yaml", reg.prefix, V1, V2)
    long_ago = int(time.time() * 1000) - 2 * group(V1).ttl_ms
    reg.hset("v1", orjson.dumps(version_record(group(V1), long_ago)))  # ready by its age
    reg.register(V2)
    now = int(time.time() * 1000)
    done = BackfillProgress("done", 3_400_000, 3_400_000, now - 86_400_000, now, now)
    reg.hset("v2:backfill", orjson.dumps(done.as_dict()))  # ready by its backfill

    same = activate(config, redis_url, "spend", "1")
    assert same.exit_code == 0, same.output
    assert "spend v1 is already the active version (the lowest configured" in same.stdout
    assert reg.active() is None  # a no-op writes nothing

    switched = activate(config, redis_url, "spend", "2")
    assert switched.exit_code == 0, switched.output
    assert switched.stdout.splitlines() == [
        "spend: active version v1 -> v2 (serve replicas and FeatureClient read it within a second)",
        f"switch back with: driftline registry activate -c {config} spend 1 (instant: v1 is "
        "written until it leaves the config)",
    ]
    assert reg.active() == b"2"

    listed = CliRunner().invoke(
        main, ["registry", "-c", str(config), "--json"], env={"DRIFTLINE_REDIS__URL": redis_url}
    )
    assert listed.exit_code == 0, listed.output
    doc = orjson.loads(listed.stdout)
    assert [(g["version"], g["status"], g["active"]) for g in doc["groups"]] == [
        (2, "active", True),
        (1, "ready", False),
    ]

    back = activate(config, redis_url, "spend", "1")  # the printed command, as printed
    assert back.exit_code == 0, back.output
    assert back.stdout.startswith("spend: active version v2 -> v1")
    assert reg.active() == b"1"
    # `registry -c FILE activate ...` reads the group's -c as well
    other = CliRunner().invoke(
        main,
        ["registry", "-c", str(config), "activate", "spend", "2"],
        env={"DRIFTLINE_REDIS__URL": redis_url},
    )
    assert other.exit_code == 0, other.output
    assert reg.active() == b"2"
