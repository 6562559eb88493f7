"""The README's Python examples run as they are written (against the test Redis).

Each example names ``redis://127.0.0.1:6379/0`` and ``prefix="driftline"``; the
test points them at the session's Redis and at a fresh prefix that holds the
group the examples read (registered as a worker registers it).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import connect_redis

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
EXAMPLES = BLOCK.findall((ROOT / "README.md").read_text())
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


def test_the_readme_has_python_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_a_readme_example_runs(code: str, redis_url: str, tmp_path: Path) -> None:
    prefix = f"readme-{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(redis_url, prefix))
    script = tmp_path / "example.py"
    code = code.replace("redis://127.0.0.1:6379/0", redis_url)
    script.write_text(code.replace('prefix="driftline"', f'prefix="{prefix}"'))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "user-00042" in result.stdout
