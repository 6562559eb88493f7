"""Training-set speed and memory: ``driftline.training_set`` against DuckDB on the same log.

    python bench/training_set.py [--events 10000000] [--rows 1000000] [--entities 100000]
                                 [--days 30] [--keep DIR] [--memory-check]

Input: a Delta Lake log written in the archiver's layout (``LogLayout``), one
commit per event date: ``--events`` transactions over ``--days`` days,
``--entities`` users (uniform), amounts log-normal; ``--rows`` label rows
(a random user, a random time in the span).  Group: ``amount`` with count,
sum, mean, min, max and std over 5m, 1h and 24h, plus ``last`` amount.

Each computation runs in a child process of its own, which reports its wall
time, CPU seconds and peak RSS:

* ``driftline``  ``training_set(config, rows, ["spend"])``: the log read a
                 date at a time, the worker's window engine per row;
* ``driftline-jN`` the same with ``jobs=N`` (``--jobs``, default 2): N processes,
                 each for a share of the entities;
* ``duckdb``     a straightforward SQL over the same Delta table
                 (its current Parquet files, as ``DeltaTable.file_uris()``
                 lists them; DuckDB's ``delta_scan`` needs an extension
                 download): rows joined to the entity's events of the last
                 24 h, count/sum/avg/min/max/stddev_pop per window by
                 ``FILTER``; exact windows ``(t - W, t]``, where driftline's
                 are aligned to W/60 buckets, as the online store's are; its
                 ``last`` is left out.

``--memory-check`` runs driftline again on a log of half the days (half the
events, the same number of rows): memory that does not grow with the events
held in the log shows as two peaks alike.  Machines are shared and noisy: compare
figures of the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
WINDOWS = {"5m": 300_000, "1h": 3_600_000, "24h": DAY}
GROUP = {
    "name": "spend",
    "version": 1,
    "source": "tx",
    "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
    "last": ["amount"],
    "windows": list(WINDOWS),
}


def write_config(where: Path, log: Path) -> Path:
    import yaml

    config = {
        "offline": {"path": str(log)},
        "sources": [
            {
                "name": "tx",
                "topic": "tx",
                "schema": str(ROOT / "schemas" / "contracts" / "transactions.schema.json"),
                "entity_key": "user_id",
                "event_time": "event_time",
            }
        ],
        "feature_groups": [GROUP],
    }
    path = where / "driftline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_log(config: Path, events: int, entities: int, days: int, seed: int) -> None:
    """The log, one commit per day, columns built with numpy in the archiver's layout."""
    import numpy as np
    import pyarrow as pa

    from driftline.sinks.offline_log import PARTITION_COLUMN, LogLayout, OfflineLog
    from driftline.streams.settings import load_settings
    from driftline.streams.sources import build_sources, declared_types

    settings = load_settings(config)
    layout = LogLayout.from_declared(declared_types(build_sources(settings, "b").parsers["tx"]))
    schema = layout.arrow_schema()
    log = OfflineLog(settings.offline.path)
    rng = np.random.default_rng(seed)
    names = np.array([f"user-{i:06d}" for i in range(entities)], dtype=object)
    per_day = events // days
    offset = -1
    for day in range(days):
        n = per_day if day < days - 1 else events - per_day * (days - 1)
        times = np.sort(T0 + day * DAY + rng.integers(0, DAY, n))
        users = names[rng.integers(0, entities, n)]
        amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
        offsets = np.arange(offset + 1, offset + 1 + n)
        columns = {
            "amount": pa.array(amount),
            "category": pa.array(np.full(n, "grocery", dtype=object), pa.string()),
            "country": pa.nulls(n, pa.string()),
            "currency": pa.nulls(n, pa.string()),
            "event_id": pa.array([f"id-{o}" for o in offsets.tolist()], pa.string()),
            "event_time": pa.array(times),
            "user_id": pa.array(users, pa.string()),
            "_entity": pa.array(users, pa.string()),
            "_event_time": pa.array(times * 1000).cast(pa.timestamp("us", tz="UTC")),
            "_topic": pa.array(np.full(n, "tx", dtype=object), pa.string()),
            "_partition": pa.array(np.zeros(n, dtype=np.int32)),
            "_offset": pa.array(offsets),
            "_timestamp": pa.array(times * 1000 + 5000).cast(pa.timestamp("us", tz="UTC")),
            "_extra": pa.nulls(n, pa.string()),
            PARTITION_COLUMN: pa.array((times // DAY).astype(np.int32)).cast(pa.date32()),
        }
        table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
        log.append("tx", table, {("tx", 0): (offset, int(offsets[-1]))})
        offset = int(offsets[-1])
        print(f"  day {day + 1}/{days}: {n:,} events", file=sys.stderr, flush=True)


def make_rows(path: Path, rows: int, entities: int, days: int, seed: int) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed + 1)
    pl.DataFrame(
        {
            "user_id": [f"user-{i:06d}" for i in rng.integers(0, entities, rows).tolist()],
            "timestamp": T0 + rng.integers(0, days * DAY, rows),
            "label": rng.integers(0, 2, rows),
        }
    ).write_parquet(path)


def run_driftline(config: Path, rows_path: Path, jobs: int = 1) -> dict[str, float]:
    import polars as pl

    from driftline.streams.training import training_set

    rows = pl.read_parquet(rows_path)
    out = training_set(config, rows, ["spend"], progress=True, jobs=jobs)
    return {"rows": out.height, "nonzero_24h": int((out["amount_count_24h"] > 0).sum())}


def run_duckdb(config: Path, rows_path: Path) -> dict[str, float]:
    import duckdb
    from deltalake import DeltaTable

    from driftline.streams.settings import load_settings

    log = Path(load_settings(config).offline.path) / "tx"
    # the table's current files (the delta extension, delta_scan, needs a download)
    files = DeltaTable(str(log)).file_uris()
    con = duckdb.connect()
    aggs = []
    for name, w in WINDOWS.items():
        inside = f"e.t > r.timestamp - {w}"
        aggs += [
            f"count(e.amount) FILTER (WHERE {inside}) AS amount_count_{name}",
            f"coalesce(sum(e.amount) FILTER (WHERE {inside}), 0) AS amount_sum_{name}",
            f"avg(e.amount) FILTER (WHERE {inside}) AS amount_mean_{name}",
            f"min(e.amount) FILTER (WHERE {inside}) AS amount_min_{name}",
            f"max(e.amount) FILTER (WHERE {inside}) AS amount_max_{name}",
            f"stddev_pop(e.amount) FILTER (WHERE {inside}) AS amount_std_{name}",
        ]
    sql = f"""
        WITH r AS (SELECT row_number() OVER () AS i, * FROM read_parquet('{rows_path}')),
             e AS (SELECT _entity AS entity, epoch_ms(_event_time) AS t, amount
                   FROM read_parquet({files!r}))
        SELECT r.i, {", ".join(aggs)}
        FROM r LEFT JOIN e
          ON e.entity = r.user_id AND e.t <= r.timestamp AND e.t > r.timestamp - {DAY}
        GROUP BY r.i
    """
    out = con.sql(sql).fetchall()
    return {"rows": len(out)}


def child(which: str, config: Path, rows_path: Path) -> None:
    started, cpu0 = time.perf_counter(), time.process_time()
    if which == "duckdb":
        result = run_duckdb(config, rows_path)
    else:  # driftline or driftline-jN
        jobs = int(which.partition("-j")[2] or 1)
        result = run_driftline(config, rows_path, jobs)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = {
        **result,
        "seconds": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu0 + kids.ru_utime + kids.ru_stime,
        # the largest process (with --jobs: the largest of the parent and its shards)
        "peak_rss_mib": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, kids.ru_maxrss)
        / 1024,
    }
    print("RESULT " + json.dumps(report), flush=True)


def measure(which: str, config: Path, rows_path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", which, str(config), str(rows_path)],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"{which} failed with {done.returncode}:\n{done.stdout[-3000:]}")
    return dict(json.loads(line[len("RESULT ") :]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the log here")
    parser.add_argument("--memory-check", action="store_true")
    parser.add_argument(
        "--jobs", type=int, default=2, help="also run driftline with this many processes (1: not)"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    where = args.keep or Path(tempfile.mkdtemp(prefix="driftline-bench-training-"))
    where.mkdir(parents=True, exist_ok=True)
    runs = [("full", args.events, args.rows, args.days)]
    if args.memory_check:
        half = args.days // 2
        runs.append(("half", args.events * half // args.days, args.rows, half))
    try:
        results = {}
        for label, events, rows, days in runs:
            sub = where / label
            sub.mkdir(exist_ok=True)
            config = write_config(sub, sub / "log")
            rows_path = sub / "rows.parquet"
            if not (sub / "log" / "tx").exists():
                print(f"writing the log: {events:,} events over {days} days", file=sys.stderr)
                t0 = time.perf_counter()
                make_log(config, events, args.entities, days, args.seed)
                make_rows(rows_path, rows, args.entities, days, args.seed)
                print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            which = ["driftline", "duckdb"] if label == "full" else ["driftline"]
            if label == "full" and args.jobs > 1:
                which.insert(1, f"driftline-j{args.jobs}")
            for w in which:
                print(f"{label}: {w} ...", file=sys.stderr, flush=True)
                results[(label, w)] = measure(w, config, rows_path)
                results[(label, w)].update(events=events, label_rows=rows)
        print()
        print("| run | computation | events | rows | seconds | rows/s | CPU-s | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for (label, w), r in results.items():
            print(
                f"| {label} | {w} | {r['events']:,} | {r['label_rows']:,} | {r['seconds']:.1f} "
                f"| {r['label_rows'] / r['seconds']:,.0f} | {r['cpu_s']:.1f} "
                f"| {r['peak_rss_mib']:.0f} |"
            )
        d, q = results[("full", "driftline")], results[("full", "duckdb")]
        print(
            f"\ndriftline / DuckDB rows/s: {q['seconds'] / d['seconds']:.3f} "
            f"(CPU: {q['cpu_s'] / d['cpu_s']:.3f}); rows with a 24h count: {d['nonzero_24h']:,}"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
