"""Training sets from a real Delta Lake log: the builder against the pure join and brute force.

The log is written with the archiver's own writer (``OfflineLog.append``)
over several event dates, events out of order in the log as partitions
interleave; the rows fall before, on, between and after events and on date
boundaries.  ``driftline training-set`` is run as a user runs it too, with
its errors for bad input.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pytest
import yaml

from driftline.features.training import point_in_time
from driftline.schemas.parser import ParsedEvent
from driftline.sinks.offline_log import LogLayout, OfflineLog
from driftline.streams.settings import load_settings
from driftline.streams.sources import build_sources, declared_types
from driftline.streams.training import training_set
from tests.worker_process import CONTRACTS, run_cli

DAY = 86_400_000
T0 = 1_764_547_200_000  # 2025-12-01T00:00Z


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def write_config(tmp_path: Path) -> Path:
    config = {
        "app_id": "training-test",
        "offline": {"path": str(tmp_path / "log")},
        "sources": [
            {
                "name": "tx",
                "topic": "tx",
                "schema": str(CONTRACTS / "transactions.schema.json"),
                "entity_key": "user_id",
                "event_time": "event_time",
            }
        ],
        "feature_groups": [
            {
                "name": "spend",
                "version": 1,
                "source": "tx",
                "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
                "distinct": ["category"],
                "last": ["amount", "category"],
                "windows": ["5m", "1h", "24h"],
            },
            {
                "name": "by_country",
                "version": 1,
                "source": "tx",
                "entity_key": "country",
                "values": {"amount": ["sum"]},
                "windows": ["1h"],
            },
        ],
    }
    path = tmp_path / "driftline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_events(n: int, seed: int) -> list[tuple[ParsedEvent, Rec]]:
    """Three days of events over 20 users, 2 partitions (keyed), out of order by up to 20 s."""
    rng = random.Random(seed)
    out = []
    offsets = [0, 0]
    for i in range(n):
        user = f"u{rng.randrange(20):02d}"
        t = T0 + i * (3 * DAY // n) + rng.randint(-20_000, 0)
        data: dict[str, Any] = {
            "event_id": f"id-{i}",
            "user_id": user,
            "amount": round(rng.uniform(0, 50), 2),
            "category": rng.choice(["grocery", "fuel", "travel"]),
            "event_time": t,
        }
        if rng.random() < 0.8:
            data["country"] = rng.choice(["DE", "FR"])
        p = int(user[1:]) % 2
        out.append((ParsedEvent(user, t, data), Rec("tx", p, offsets[p], t + 5)))
        offsets[p] += 1
    return out


def write_log(config_path: Path, events: list[tuple[ParsedEvent, Rec]], batches: int) -> None:
    settings = load_settings(config_path)
    sources = build_sources(settings, str(config_path))
    layout = LogLayout.from_declared(declared_types(sources.parsers["tx"]))
    log = OfflineLog(settings.offline.path)
    stored = {0: -1, 1: -1}
    size = math.ceil(len(events) / batches)
    for start in range(0, len(events), size):
        part = events[start : start + size]
        written = {}
        for p in (0, 1):
            mine = [r.offset for _, r in part if r.partition == p]
            if mine:
                written[("tx", p)] = (stored[p], max(mine))
                stored[p] = max(mine)
        log.append("tx", layout.to_table([e for e, _ in part], [r for _, r in part]), written)


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, list[tuple[ParsedEvent, Rec]]]:
    config = write_config(tmp_path)
    events = make_events(3_000, seed=1)
    write_log(config, events, batches=7)
    return config, events


def test_the_training_set_equals_the_pure_join_over_the_same_events(
    logged: tuple[Path, list[tuple[ParsedEvent, Rec]]],
) -> None:
    config, events = logged
    rng = random.Random(2)
    times = [e.event_time_ms for e, _ in events]
    picks = (
        [rng.choice(times) for _ in range(60)]  # on an event: it counts
        + [rng.randint(T0 - 60_000, T0 + 3 * DAY + 3_600_000) for _ in range(120)]
        + [T0 + DAY, T0 + DAY - 1, T0 + 2 * DAY]  # date boundaries
    )
    users = [f"u{rng.randrange(22):02d}" for _ in picks]  # u20, u21: no events
    rows = pl.DataFrame(
        {
            "user_id": users,
            "timestamp": pl.Series(picks).cast(pl.Datetime("ms")),  # naive: UTC
            "label": [i % 2 for i in range(len(picks))],
        }
    )
    out = training_set(config, rows, ["spend"])
    assert out.columns[:3] == ["user_id", "timestamp", "label"]
    assert out["label"].to_list() == rows["label"].to_list()
    settings = load_settings(config)
    group = next(g for g in build_sources(settings, "t").all_groups() if g.name == "spend")
    expected = point_in_time(group, [e for e, _ in events], list(zip(users, picks, strict=True)))
    mismatches = [
        (i, name, out[name][i], vector.values[name])
        for i, vector in enumerate(expected)
        for name in group.feature_names()
        if not close(out[name][i], vector.values[name])
    ]
    assert not mismatches, mismatches[:5]
    # and nothing after a row's time leaks in: a row just before an event does not see it
    first = min(events, key=lambda p: p[0].event_time_ms)[0]
    before = training_set(
        config,
        pl.DataFrame({"user_id": [first.entity], "timestamp": [first.event_time_ms - 1]}),
        ["spend:amount_count_24h"],
    )
    assert before["amount_count_24h"].to_list() == [0]


def test_processes_for_shares_of_the_entities_give_the_same_training_set(
    logged: tuple[Path, list[tuple[ParsedEvent, Rec]]],
) -> None:
    config, _ = logged
    rng = random.Random(5)
    rows = pl.DataFrame(
        {
            "user_id": [f"u{rng.randrange(22):02d}" for _ in range(300)],
            "timestamp": [rng.randint(T0, T0 + 3 * DAY) for _ in range(300)],
        }
    )
    features = ["spend"]
    one = training_set(config, rows, features)
    three = training_set(config, rows, features, jobs=3)
    assert three.equals(one)


def test_a_group_keyed_by_another_field_reads_its_own_entities(
    logged: tuple[Path, list[tuple[ParsedEvent, Rec]]],
) -> None:
    config, events = logged
    at = T0 + DAY + 1_234_567
    rows = pl.DataFrame({"entity": ["DE", "FR", "XX"], "timestamp": [at, at, at]})
    out = training_set(config, rows, ["by_country:amount_sum_1h", "spend:amount_sum_1h"])
    # the same feature name in two groups: both columns say their group
    assert "by_country:amount_sum_1h" in out.columns and "spend:amount_sum_1h" in out.columns
    for country, got in zip(["DE", "FR", "XX"], out["by_country:amount_sum_1h"], strict=True):
        r = 3_600_000 // 60
        want = math.fsum(
            e.data["amount"]
            for e, _ in events
            if e.data.get("country") == country
            and at // r - 60 < e.event_time_ms // r <= at // r
            and e.event_time_ms <= at
        )
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (country, got, want)


def test_the_command_reads_and_writes_files_and_explains_mistakes(
    tmp_path: Path, logged: tuple[Path, list[tuple[ParsedEvent, Rec]]]
) -> None:
    config, _ = logged
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "user_id,timestamp,churned\nu01,2025-12-02T12:00:00Z,1\nu02,2025-12-03T00:00:00Z,0\n"
    )
    out = tmp_path / "train.parquet"
    done = run_cli(
        "training-set", "-c", str(config), "--entities", str(labels),
        "--features", "spend:amount_mean_24h,spend:category_last", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frame = pl.read_parquet(out)
    assert frame.columns == ["user_id", "timestamp", "churned", "amount_mean_24h", "category_last"]
    assert frame["amount_mean_24h"].null_count() == 0
    # compacting the log changes no value
    compacted = run_cli("archive", "-c", str(config), "--compact")
    rewritten = re.search(r"(\d+) files rewritten into 3\b", compacted.stdout)  # a file a date
    assert compacted.returncode == 0 and rewritten, compacted.stdout + compacted.stderr
    assert int(rewritten.group(1)) > 3
    again = tmp_path / "again.parquet"
    done = run_cli(
        "training-set", "-c", str(config), "--entities", str(labels),
        "--features", "spend:amount_mean_24h,spend:category_last", "--out", str(again),
    )  # fmt: skip
    assert done.returncode == 0 and pl.read_parquet(again).equals(frame), done.stderr
    csv_out = tmp_path / "train.csv"
    done = run_cli(
        "training-set", "-c", str(config), "--entities", str(labels),
        "--features", "spend:amount_mean_24h", "--out", str(csv_out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pl.read_csv(csv_out)["amount_mean_24h"].to_list() == frame["amount_mean_24h"].to_list()
    for features, message in [
        ("spend:amount_mean_25h", "did you mean amount_mean_24h"),
        ("spnd:amount_mean_24h", "did you mean spend"),
    ]:
        bad = run_cli(
            "training-set", "-c", str(config), "--entities", str(labels),
            "--features", features, "--out", str(out),
        )  # fmt: skip
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    bad = run_cli(
        "training-set", "-c", str(config), "--entities", str(labels), "--time-column", "ts",
        "--features", "spend", "--out", str(out),
    )  # fmt: skip
    assert bad.returncode == 2 and "no time column 'ts'" in bad.stderr, bad.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text(config.read_text().replace(str(tmp_path / "log"), str(tmp_path / "nolog")))
    for jobs in ("1", "2"):  # said by the process itself, or by one of its shards
        bad = run_cli(
            "training-set", "-c", str(empty), "--entities", str(labels),
            "--features", "spend", "--out", str(out), "--jobs", jobs,
        )  # fmt: skip
        assert bad.returncode == 2 and "driftline archive" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
