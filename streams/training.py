"""Training sets: each label row's features as of its time, from the offline event log.

``driftline training-set`` and :func:`training_set` (also ``driftline.training_set``)
read the rows (entity, timestamp, any label columns), then the log of every
source a requested feature reads, one event date at a time in event-time
order, and answer each row with :class:`~driftline.features.training.PointInTimeJoin`:
the worker's own window engine over the events at or before the row's time.

Rows: the entity column is the group's entity key (``user_id``), or
``entity``, unless named; the time column is ``timestamp`` unless named, as a
datetime (naive means UTC), epoch milliseconds, or ISO-8601 text.
Features: ``group:feature`` or ``group`` (all of it); with several versions of
a group configured, ``group`` is the newest and ``group@N`` version ``N``.  A
feature's column is its name, or ``group:feature`` (``group@N:feature``) when
two requested groups share the name.

Memory: the rows, the window states of entities whose rows are not all
answered, and one event date of the requested columns of the log.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from driftline.features.definitions import FeatureGroup, group_refs, newest_versions
from driftline.features.engine import rekey
from driftline.features.state import FeatureVector
from driftline.features.training import PointInTimeJoin
from driftline.sinks.offline_log import LogLayout, OfflineLog, columns_for, day_of
from driftline.streams.errors import ConfigError
from driftline.streams.settings import Settings, load_settings
from driftline.streams.sources import Sources, build_sources, declared_types

__all__ = ["read_rows", "training_set", "write_rows"]

#: Events handed to the joins at once (the progress bar moves this often).
_SLICE = 50_000


@dataclass(frozen=True)
class _Wanted:
    group: FeatureGroup
    features: tuple[str, ...]
    #: how the group is named in columns: ``name`` for its newest configured version,
    #: ``name@N`` for an older one
    label: str


def _parse_features(specs: Sequence[str], groups: Sequence[FeatureGroup]) -> list[_Wanted]:
    """``group:feature`` or ``group`` (all its features); ``group@N`` names version N, a
    name alone the newest configured version."""
    by_ref = group_refs(groups)
    newest = newest_versions(groups)
    chosen: dict[str, tuple[FeatureGroup, list[str]]] = {}
    for raw in specs:
        spec = raw.strip()
        if not spec:
            continue
        ref, _, feature = spec.partition(":")
        group = by_ref.get(ref)
        if group is None:
            name = ref.partition("@")[0]
            versions = sorted(g.version for g in groups if g.name == name)
            if versions:
                raise ConfigError(
                    f"--features {spec}: the config has versions "
                    f"{', '.join(map(str, versions))} of {name}, not {ref.partition('@')[2]!r}"
                )
            known = sorted(newest)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"--features {spec}: no feature group {name!r}{hint}; "
                f"the config has {', '.join(known) or 'none'}"
            )
        label = group.name if newest[group.name] is group else f"{group.name}@{group.version}"
        names = group.feature_names()
        if not feature:
            picked = list(names)
        elif feature in names:
            picked = [feature]
        else:
            close = difflib.get_close_matches(feature, list(names), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"--features {spec}: group {label} has no feature {feature!r}{hint}")
        have = chosen.setdefault(label, (group, []))[1]
        have += [f for f in picked if f not in have]
    if not chosen:
        raise ConfigError("--features: name at least one feature (group:feature or group)")
    return [_Wanted(g, tuple(fs), label) for label, (g, fs) in chosen.items()]


def _column_names(wanted: Sequence[_Wanted]) -> dict[tuple[str, str], str]:
    counts: dict[str, int] = {}
    for w in wanted:
        for f in w.features:
            counts[f] = counts.get(f, 0) + 1
    return {
        (w.label, f): (f if counts[f] == 1 else f"{w.label}:{f}")
        for w in wanted
        for f in w.features
    }


def read_rows(path: Path) -> pl.DataFrame:
    """A labels file: Parquet (``.parquet``, ``.pq``) or CSV (anything else)."""
    if not path.exists():
        raise ConfigError(f"--entities {path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pl.read_parquet(path)
        return pl.read_csv(path, try_parse_dates=True)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ConfigError(f"--entities {path}: cannot be read: {exc}") from None


def write_rows(frame: pl.DataFrame, path: Path) -> None:
    """Parquet for ``.parquet``/``.pq``, CSV otherwise."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame.write_parquet(path)
        else:
            frame.write_csv(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ConfigError(f"--out {path}: cannot be written: {exc}") from None


def _times_ms(frame: pl.DataFrame, column: str) -> list[int]:
    series = frame[column]
    dtype = series.dtype
    if dtype == pl.String:
        try:
            series = series.str.to_datetime(time_zone="UTC")
        except pl.exceptions.PolarsError:
            raise ConfigError(
                f"time column {column!r}: not ISO-8601 times (e.g. 2026-12-02T10:00:00Z)"
            ) from None
        dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            series = series.dt.replace_time_zone("UTC")
        ms = series.dt.epoch("ms")
    elif dtype.is_integer():
        ms = series
    else:
        raise ConfigError(
            f"time column {column!r} is {dtype}: give datetimes, epoch ms or ISO-8601 text"
        )
    if ms.null_count():
        raise ConfigError(f"time column {column!r} has {ms.null_count()} empty values")
    return [int(v) for v in ms.to_list()]


def _as_polars(rows: Any) -> tuple[pl.DataFrame, bool]:
    """The rows as polars, and whether they came as pandas (then pandas goes back)."""
    if isinstance(rows, pl.DataFrame):
        return rows, False
    if isinstance(rows, str | Path):
        return read_rows(Path(rows)), False
    module = type(rows).__module__
    if module.startswith("pandas"):
        return pl.from_pandas(rows), True
    if module.startswith("pyarrow"):
        frame = pl.from_arrow(rows)
        assert isinstance(frame, pl.DataFrame)
        return frame, False
    raise ConfigError(
        f"rows: give a polars or pandas DataFrame, a pyarrow Table or a file, not {module}"
    )


def training_set(
    config: str | Path | Settings,
    rows: Any,
    features: Sequence[str],
    *,
    entity_column: str | None = None,
    time_column: str = "timestamp",
    progress: bool = False,
    sources: Sources | None = None,
    jobs: int = 1,
) -> Any:
    """Each row of ``rows`` with the requested features as of its time (see the module doc).

    ``rows``: a polars or pandas DataFrame, a pyarrow Table, or a Parquet/CSV
    path.  Returns a polars DataFrame (pandas when ``rows`` is pandas): the
    rows' columns, in their order, then one column per feature.  ``jobs`` > 1
    (with ``config`` a file) splits the entities over that many processes.
    """
    if isinstance(config, Settings):
        settings, origin = config, "config"
    else:
        settings, origin = load_settings(config), str(config)
    if sources is None:
        sources = build_sources(settings, origin)
    frame, pandas_out = _as_polars(rows)
    wanted = _parse_features(features, sources.all_groups())
    keys = {w.group.entity_key for w in wanted}
    if entity_column is None:
        entity_column = next(iter(keys)) if len(keys) == 1 else "entity"
        if entity_column not in frame.columns and "entity" in frame.columns:
            entity_column = "entity"
    for label, column in (("entity", entity_column), ("time", time_column)):
        if column not in frame.columns:
            raise ConfigError(
                f"the rows have no {label} column {column!r} (columns: {', '.join(frame.columns)})"
                f"; name it with --{label}-column"
            )
    if frame[entity_column].null_count():
        raise ConfigError(f"entity column {entity_column!r} has empty values")
    entities = [str(e) for e in frame[entity_column].cast(pl.String).to_list()]
    times = _times_ms(frame, time_column)
    row_keys = list(zip(entities, times, strict=True))
    if jobs > 1 and not isinstance(config, Settings) and len(row_keys) > 1:
        results = _compute_in_shards(Path(config), features, row_keys, jobs, progress)
    else:
        results = _compute(settings, sources, wanted, row_keys, progress)
    names = _column_names(wanted)
    clash = sorted(set(names.values()) & set(frame.columns))
    if clash:
        raise ConfigError(f"the rows already have columns named like features: {clash}")
    out = frame.with_columns([series.alias(names[key]) for key, series in results.items()])
    return out.to_pandas() if pandas_out else out


def _compute(
    settings: Settings,
    sources: Sources,
    wanted: Sequence[_Wanted],
    row_keys: Sequence[tuple[str, int]],
    progress: bool,
) -> dict[tuple[str, str], pl.Series]:
    """Every requested feature of every row, by (group, feature), in row order."""
    log = OfflineLog(settings.offline.path)
    results: dict[tuple[str, str], pl.Series] = {}
    by_source: dict[str, list[_Wanted]] = {}
    for w in wanted:
        by_source.setdefault(w.group.source, []).append(w)
    until = max((t for _, t in row_keys), default=0)
    for source, ws in by_source.items():
        collectors = [_Columns(w, len(row_keys)) for w in ws]
        joins = [
            PointInTimeJoin(w.group, row_keys, on_row=c)
            for w, c in zip(ws, collectors, strict=True)
        ]
        with _few_collections():
            _feed_source(log, settings, sources, source, ws, joins, until, progress)
        for w, join, collected in zip(ws, joins, collectors, strict=True):
            join.finish()
            for f in w.features:
                results[(w.label, f)] = collected.series(f)
    return results


def _compute_in_shards(
    config: Path,
    features: Sequence[str],
    row_keys: Sequence[tuple[str, int]],
    jobs: int,
    progress: bool,
) -> dict[tuple[str, str], pl.Series]:
    """:func:`_compute` in ``jobs`` child processes, each for the rows of a share of the
    entities (by CRC-32 of the entity, so an entity's rows stay together).

    Rows go to the children and features come back as Parquet files (no pickle
    crosses the process boundary); a child's failure is raised with its message.
    """
    shard_of = [zlib.crc32(e.encode()) % jobs for e, _ in row_keys]
    with tempfile.TemporaryDirectory(prefix="driftline-training-") as tmp:
        children = []
        for k in range(jobs):
            mine = [i for i, s in enumerate(shard_of) if s == k]
            if not mine:
                continue
            rows_path, out_path = Path(tmp) / f"rows-{k}.parquet", Path(tmp) / f"out-{k}.parquet"
            pl.DataFrame(
                {
                    "_row": mine,
                    "entity": [row_keys[i][0] for i in mine],
                    "t": pl.Series([row_keys[i][1] for i in mine], dtype=pl.Int64),
                }
            ).write_parquet(rows_path)
            command = [
                sys.executable, "-m", "driftline.streams.training", str(config),
                str(rows_path), ",".join(features), str(out_path),
            ]  # fmt: skip
            child = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            children.append((child, out_path))
        parts = []
        with tqdm(
            total=len(children), unit="shard", desc="entities", file=sys.stderr,
            disable=not progress or None,
        ) as bar:  # fmt: skip
            for child, out_path in children:
                _, err = child.communicate()
                if child.returncode != 0:
                    for other, _ in children:
                        other.kill()
                    raise ConfigError(f"a training-set process failed: {err.strip()[-2000:]}")
                parts.append(pl.read_parquet(out_path))
                bar.update(1)
    merged = pl.concat(parts).sort("_row")
    results: dict[tuple[str, str], pl.Series] = {}
    for name in merged.columns:
        if name != "_row":
            group, _, feature = name.partition(":")
            results[(group, feature)] = merged[name]
    return results


def _shard_main(argv: Sequence[str]) -> None:
    """A child of :func:`_compute_in_shards`: CONFIG ROWS FEATURES OUT."""
    config, rows_path, features, out_path = argv
    settings = load_settings(config)
    sources = build_sources(settings, config)
    wanted = _parse_features(features.split(","), sources.all_groups())
    rows = pl.read_parquet(rows_path)
    row_keys = list(zip(rows["entity"].to_list(), rows["t"].to_list(), strict=True))
    results = _compute(settings, sources, wanted, row_keys, progress=False)
    out = pl.DataFrame({"_row": rows["_row"]}).with_columns(
        [series.alias(f"{g}:{f}") for (g, f), series in results.items()]
    )
    out.write_parquet(out_path)


class _Columns:
    """The requested features of every row, by column: numbers in numpy arrays (8 bytes
    a value, not a Python object each: a million rows of 20 features stay ~160 MB)."""

    def __init__(self, wanted: _Wanted, n: int) -> None:
        specs = {s.name: s for s in wanted.group.layout.features}
        self.ints: dict[str, np.ndarray[Any, Any]] = {}
        self.floats: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}
        self.objects: dict[str, list[Any]] = {}
        for f in wanted.features:
            spec = specs[f]
            if spec.kind == "last":
                self.objects[f] = [None] * n
            elif spec.kind == "distinct" or spec.aggregation == "count":
                self.ints[f] = np.zeros(n, dtype=np.int64)
            else:
                self.floats[f] = (np.zeros(n, dtype=np.float64), np.zeros(n, dtype=bool))

    def __call__(self, i: int, vector: FeatureVector) -> None:
        values = vector.values
        for f, ints in self.ints.items():
            ints[i] = values[f]
        for f, (floats, present) in self.floats.items():
            v = values[f]
            if v is not None:
                floats[i] = v
                present[i] = True
        for f, objects in self.objects.items():
            objects[i] = values[f]

    def series(self, f: str) -> pl.Series:
        if f in self.ints:
            return pl.Series(f, self.ints[f])
        if f in self.floats:
            floats, present = self.floats[f]
            return pl.Series(f, floats).set(pl.Series(~present), None)
        return pl.Series(f, self.objects[f], strict=False)


@contextlib.contextmanager
def _few_collections() -> Iterator[None]:
    """Fewer garbage collections while millions of small, acyclic objects come and go.

    The events, deltas and states the join makes hold no reference cycles;
    the collector's default thresholds rescan the long-lived states every few
    hundred allocations, which tripled the time of building events.
    """
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _feed_source(
    log: OfflineLog,
    settings: Settings,
    sources: Sources,
    source: str,
    wanted: Sequence[_Wanted],
    joins: Sequence[PointInTimeJoin],
    until_ms: int,
    progress: bool,
) -> None:
    """Feed the joins the log of ``source`` up to ``until_ms``, a date at a time, in time order."""
    held = log.dates(source)  # the table's dates from its commit log (none: no table)
    if not held and not log.exists(source):
        raise ConfigError(
            f"no offline log of source {source} at {log.table_uri(source)}: run "
            "`driftline archive` (it writes offline.path), or point offline.path at the log"
        )
    layout = LogLayout.from_declared(declared_types(sources.parsers[source]))
    source_key = sources.parsers[source].entity_key
    rekeyed: dict[str, list[int]] = {}
    for i, w in enumerate(wanted):
        if w.group.entity_key != source_key:
            rekeyed.setdefault(w.group.entity_key, []).append(i)
    plain = [i for i, w in enumerate(wanted) if w.group.entity_key == source_key]
    lf = log.scan(source)
    columns = columns_for([w.group for w in wanted], source_key, lf.collect_schema().names())
    until = pl.lit(until_ms).cast(pl.Datetime("ms", "UTC"))
    lf = lf.filter(pl.col("_event_time") <= until)
    if not rekeyed:
        lf = lf.filter(pl.col("_entity").is_in(list(joins[0].entities)))
    last_day = day_of(until_ms)
    days = [(day, n) for day, n in held if day <= last_day]
    total = sum(n for _, n in days)  # at most: events after until_ms are not read
    with tqdm(
        total=total,
        unit="ev",
        desc=f"{source}",
        file=sys.stderr,
        disable=not progress or None,
    ) as bar:
        for day, _ in days:
            chunk = (
                lf.filter(pl.col("event_date") == day)
                .select(columns)
                .sort(["_event_time", "_partition", "_offset"], maintain_order=True)
                .collect()
            )
            for start in range(0, chunk.height, _SLICE):
                piece = chunk.slice(start, _SLICE)
                events = list(layout.events(piece.to_arrow()))
                for i in plain:
                    joins[i].feed(events)
                for key, idx in rekeyed.items():
                    keyed, _ = rekey(events, key)
                    for i in idx:
                        joins[i].feed(keyed)
                bar.update(piece.height)


if __name__ == "__main__":  # a shard of _compute_in_shards
    try:
        _shard_main(sys.argv[1:])
    except Exception as exc:  # the parent shows it
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
