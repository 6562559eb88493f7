"""The Python examples of the README and of the docs pages run as they are written.

Every ``python`` code block of ``README.md`` and ``docs/*.md`` runs against the
test Redis.  Each example names ``redis://127.0.0.1:6379/0`` and
``prefix="driftline"``; the test points them at the session's Redis and at a
fresh prefix that holds the group the examples read (registered as a worker
registers it).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.offline_log import LogLayout, OfflineLog
from driftline.sinks.redis_client import connect_redis
from driftline.streams.settings import load_settings
from driftline.streams.sources import build_sources, declared_types
from driftline.streams.worker.records import RawRecord

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = {
    f"{path.relative_to(ROOT)}:{i}": code
    for path in FILES
    for i, code in enumerate(BLOCK.findall(path.read_text()), 1)
}
USER_SPEND = {
    "name": "user_spend",
    "version": 1,
    "source": "transactions",
    "entity_key": "user_id",
    "values": {"amount": ["count", "mean"]},
    "windows": ["5m", "1h"],
}


async def seed(url: str, prefix: str) -> None:
    group = FeatureGroup.from_config(USER_SPEND)
    client = connect_redis(url)
    try:
        store = RedisFeatureStore(client, prefix=prefix)
        await store.register(group)
        events = [ParsedEvent("user-00042", 1_700_000_000_000, {"amount": 3.0})]
        await store.apply(
            "transactions",
            0,
            expected_offset=-1,
            new_offset=0,
            watermark_ms=None,
            deltas=[(group, build_deltas(group, events))],
        )
    finally:
        await client.aclose()


def test_the_readme_and_the_reading_page_have_python_examples() -> None:
    where = {name.split(":")[0] for name in EXAMPLES}
    assert {"README.md", "docs/features.md"} <= where, where


def seed_offline_log(where: Path) -> None:
    """``driftline.yaml`` in ``where`` and its offline log, holding the seeded event."""
    config = {
        "offline": {"path": "driftline-log"},
        "sources": [
            {
                "name": "transactions",
                "topic": "transactions",
                "schema": str(ROOT / "schemas" / "contracts" / "transactions.schema.json"),
                "entity_key": "user_id",
                "event_time": "event_time",
            }
        ],
        "feature_groups": [{k: v for k, v in USER_SPEND.items() if k != "entity_key"}],
    }
    (where / "driftline.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(where / "driftline.yaml")
    parser = build_sources(settings, "readme").parsers["transactions"]
    layout = LogLayout.from_declared(declared_types(parser))
    event = ParsedEvent("user-00042", 1_700_000_000_000, {"user_id": "user-00042", "amount": 3.0})
    record = RawRecord("transactions", 0, 0, 1_700_000_000_000, None, None, ())
    OfflineLog(str(where / "driftline-log")).append(
        "transactions", layout.to_table([event], [record]), {("transactions", 0): (-1, 0)}
    )


@pytest.mark.parametrize("code", list(EXAMPLES.values()), ids=list(EXAMPLES))
def test_a_python_example_of_the_docs_runs(code: str, redis_url: str, tmp_path: Path) -> None:
    prefix = f"readme-{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(redis_url, prefix))
    if "training_set" in code:
        seed_offline_log(tmp_path)
    script = tmp_path / "example.py"
    code = code.replace("redis://127.0.0.1:6379/0", redis_url)
    script.write_text(code.replace('prefix="driftline"', f'prefix="{prefix}"'))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "user-00042" in result.stdout
