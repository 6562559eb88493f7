"""The built wheel as a user installs it: one import name, beside a project with its own `features/`.

The wheel is built from this checkout and installed without dependencies
into a fresh virtual environment; the dependencies come from the test's own
environment through a path entry (no download, and not the editable install
of this checkout, whose finder would hide a broken wheel).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import orjson
import pytest

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import connect_redis

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

USER_SCRIPT = """
import json, sys
import features                      # the user's own package, not driftline's
assert features.MINE == "user", features
import driftline
from driftline import FeatureClient

url, prefix, as_of = sys.argv[1], sys.argv[2], int(sys.argv[3])
with FeatureClient.redis(url, prefix=prefix) as client:
    [row] = client.get_online_features(
        ["u1"], ["spend:amount_count_1h", "spend:amount_sum_1h"], as_of_ms=as_of
    )
print(json.dumps({"file": driftline.__file__, "values": row.values, "fresh": row.freshness}))
"""


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_wheel_installs_one_package_and_reads_features_beside_a_features_package(
    tmp_path: Path, redis_url: str
) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT))
    [wheel] = dist.glob("driftline-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        assert "driftline/features/codec.py" in zf.namelist()
        assert "driftline/schemas/contracts/transactions.schema.json" in zf.namelist()
        assert "driftline/streams/py.typed" in zf.namelist()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"driftline"}, tops

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    site = Path(
        run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    # dependencies from this environment (a plain path entry: its .pth files,
    # among them the editable finder of this checkout, are not processed)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        str(wheel),
    )

    project = tmp_path / "user-project"
    (project / "features").mkdir(parents=True)
    (project / "features" / "__init__.py").write_text('MINE = "user"\n')
    (project / "read.py").write_text(USER_SCRIPT)

    spec = {
        "name": "spend",
        "version": 1,
        "source": "tx",
        "entity_key": "user_id",
        "values": {"amount": ["count", "sum"]},
        "windows": ["1h"],
    }
    group = FeatureGroup.from_config(spec)
    prefix = f"wheel-{uuid.uuid4().hex[:8]}"
    events = [ParsedEvent("u1", 1_000_000 + i, {"user_id": "u1", "amount": 2.0}) for i in range(3)]

    async def write() -> None:
        client = connect_redis(redis_url)
        try:
            store = RedisFeatureStore(client, prefix=prefix)
            await store.register(group)  # as a worker does: the client reads the definition
            ok, _ = await store.apply(
                "tx",
                0,
                expected_offset=-1,
                new_offset=2,
                watermark_ms=1_000_002,
                deltas=[(group, build_deltas(group, events))],
            )
            assert ok
        finally:
            await client.aclose()

    asyncio.run(write())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = run(
        str(python),
        "read.py",
        redis_url,
        prefix,
        str(1_000_010),
        cwd=project,
        env=env,
    )
    result = orjson.loads(out.strip().splitlines()[-1])
    assert Path(result["file"]).is_relative_to(site), result["file"]  # the wheel, not the checkout
    assert result["values"] == {"spend:amount_count_1h": 3, "spend:amount_sum_1h": 6.0}
    assert set(result["fresh"].values()) == {"fresh"}
    assert "driftline, version" in run(str(venv / "bin" / "driftline"), "--version", env=env)
