"""The offline event log: each source's accepted events in a Delta Lake table.

Why Delta Lake: its commits are atomic and carry *application transactions*
(an id and a version, checked by the writer's conflict detection), which is
exactly the exactly-once seam an archiver needs: the id is a Kafka partition,
the version the last offset written.  Plain Parquet would need a hand-written
commit protocol; Iceberg's Python writer has no equivalent of the
per-application version.  Delta tables are read by pandas and polars
(``deltalake``, ``polars.scan_delta``), DuckDB (``delta_scan``) and Spark
without driftline.

Layout: one table per source, ``<root>/<source>/``, partitioned by
``event_date`` (UTC date of the event time)::

    <root>/transactions/_delta_log/00000000000000000000.json ...
    <root>/transactions/event_date=2026-12-02/part-...parquet

    column          type                        what
    <contract>      from the contract           number -> double, integer -> int64,
                                                string/enum -> string, boolean -> bool,
                                                anything else -> JSON text
    _entity         string                      the source's entity key, as the worker reads it
    _event_time     timestamp[us, UTC]          the event time the features used
    _topic          string
    _partition      int32
    _offset         int64
    _timestamp      timestamp[us, UTC]          the Kafka record timestamp
    _extra          string (JSON, mostly null)  fields outside the contract's columns, or
                                                values their column cannot hold
    event_date      date                        partition column

An absent field and a ``null`` one are both null (the window engine treats them
alike).  Each commit records, per Kafka partition it wrote, the application
transaction ``<topic>/<partition>`` with the last offset written: a writer
reads that version before it writes and commits against the table version it
read, so two writers of one partition cannot both commit (Delta's conflict
check refuses the second with a concurrent-transaction error).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
import pyarrow as pa

from driftline.sinks.exceptions import PermanentError, SinkError, TransientError

if TYPE_CHECKING:
    import polars as pl

    from driftline.features.definitions import FeatureGroup
    from driftline.schemas.parser import ParsedEvent

__all__ = [
    "META_COLUMNS",
    "PARTITION_COLUMN",
    "LogFenceError",
    "LogLayout",
    "OfflineLog",
    "columns_for",
]

Kind = Literal["float", "int", "string", "bool", "json"]
PARTITION_COLUMN = "event_date"
META_COLUMNS = ("_entity", "_event_time", "_topic", "_partition", "_offset", "_timestamp", "_extra")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_FLOATS = frozenset({"number", "float", "double"})
_INTS = frozenset({"integer", "int", "long"})
_STRINGS = frozenset({"string", "enum"})
_ARROW: dict[Kind, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "json": pa.string(),
}
_US = pa.timestamp("us", tz="UTC")
_READ_META = ("_entity", "_event_time", "_partition", "_offset", "_extra")
_EXACT_INT = 1 << 53
_DAY_MS = 86_400_000
_EPOCH = dt.date(1970, 1, 1)


class LogFenceError(SinkError):
    """Another writer wrote a partition this one was about to write (a rebalance).

    Neither transient nor permanent: retrying the same commit is wrong, the
    writer must reload where its partitions stand.
    """


class Position(Protocol):
    """Where a record came from (``RawRecord`` has these)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


def _kind(declared: Sequence[str]) -> Kind:
    """The column kind of a field from its declared types (one per contract)."""
    alternatives = {t for d in declared for t in d.split("|")} - {"null"}
    if alternatives and alternatives <= _INTS:
        return "int"
    if alternatives and alternatives <= _FLOATS | _INTS:
        return "float"
    if alternatives and alternatives <= _STRINGS:
        return "string"
    if alternatives == {"boolean"}:
        return "bool"
    return "json"


def _fits(kind: Kind, v: Any) -> bool:
    t = type(v)
    if kind == "float":
        # an int a double holds exactly; a larger one goes to _extra, unchanged
        return t is float or (t is int and abs(v) <= _EXACT_INT)
    if kind == "int":
        return t is int and _INT64[0] <= v <= _INT64[1]
    if kind == "string":
        return t is str
    if kind == "bool":
        return t is bool
    return True


def _dumps(v: Any) -> str:
    try:
        return orjson.dumps(v).decode()
    except TypeError:  # an int past 64 bits: the standard library writes any int
        return json.dumps(v)


def _loads(s: str) -> Any:
    # the standard library: orjson reads an integer past 64 bits as a float
    return json.loads(s)


@dataclass(frozen=True)
class LogLayout:
    """The columns of one source's table: the contract's fields, then the metadata."""

    fields: tuple[tuple[str, Kind], ...]

    @classmethod
    def from_declared(cls, declared: Mapping[str, Sequence[str]]) -> LogLayout:
        """The layout for the declared types of a source's fields (see ``declared_types``)."""
        reserved = sorted(n for n in declared if n in META_COLUMNS or n == PARTITION_COLUMN)
        if reserved:
            raise PermanentError(
                f"contract fields {reserved} clash with the offline log's own columns "
                f"({', '.join(META_COLUMNS)}, {PARTITION_COLUMN})"
            )
        return cls(tuple((name, _kind(types)) for name, types in sorted(declared.items())))

    def arrow_schema(self) -> pa.Schema:
        columns = [pa.field(name, _ARROW[kind]) for name, kind in self.fields]
        meta = [
            pa.field("_entity", pa.string(), nullable=False),
            pa.field("_event_time", _US, nullable=False),
            pa.field("_topic", pa.string(), nullable=False),
            pa.field("_partition", pa.int32(), nullable=False),
            pa.field("_offset", pa.int64(), nullable=False),
            pa.field("_timestamp", _US, nullable=False),
            pa.field("_extra", pa.string()),
            pa.field(PARTITION_COLUMN, pa.date32(), nullable=False),
        ]
        return pa.schema(columns + meta)

    def to_table(self, events: Sequence[ParsedEvent], records: Sequence[Position]) -> pa.Table:
        """The rows of accepted ``events``, each with the record it came from."""
        known = {name for name, _ in self.fields}
        columns: dict[str, list[Any]] = {name: [] for name, _ in self.fields}
        extra: list[str | None] = []
        for event in events:
            data = event.data
            odd: dict[str, Any] = {}
            for name, kind in self.fields:
                v = data.get(name)
                if v is None:
                    columns[name].append(None)
                elif not _fits(kind, v):
                    columns[name].append(None)
                    odd[name] = v
                elif kind == "json":
                    columns[name].append(_dumps(v))
                elif kind == "float":
                    columns[name].append(float(v))
                else:
                    columns[name].append(v)
            for name, v in data.items():
                if name not in known and v is not None:
                    odd[name] = v
            extra.append(_dumps(odd) if odd else None)
        times = [e.event_time_ms for e in events]
        arrays: dict[str, pa.Array] = {
            name: pa.array(columns[name], _ARROW[kind]) for name, kind in self.fields
        }
        arrays["_entity"] = pa.array([e.entity for e in events], pa.string())
        arrays["_event_time"] = pa.array([t * 1000 for t in times], pa.int64()).cast(_US)
        arrays["_topic"] = pa.array([r.topic for r in records], pa.string())
        arrays["_partition"] = pa.array([r.partition for r in records], pa.int32())
        arrays["_offset"] = pa.array([r.offset for r in records], pa.int64())
        arrays["_timestamp"] = pa.array([r.timestamp_ms * 1000 for r in records], pa.int64()).cast(
            _US
        )
        arrays["_extra"] = pa.array(extra, pa.string())
        arrays[PARTITION_COLUMN] = pa.array([t // _DAY_MS for t in times], pa.int32()).cast(
            pa.date32()
        )
        schema = self.arrow_schema()
        return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)

    def events(self, table: pa.Table | pa.RecordBatch) -> Iterator[ParsedEvent]:
        """The events of rows read back (any subset of the fields' columns, plus
        ``_entity`` and ``_event_time``; ``_extra`` if present), in row order.

        A null may come back as an absent field or as a ``None`` value: the
        window engine reads both as absent."""
        from driftline.schemas.parser import ParsedEvent

        names = set(table.schema.names)
        wanted = [(name, kind) for name, kind in self.fields if name in names]
        fields = [name for name, _ in wanted]
        json_fields = [name for name, kind in wanted if kind == "json"]
        cols = [table.column(name).to_pylist() for name in fields]
        extra = table.column("_extra").to_pylist() if "_extra" in names else None
        entities = table.column("_entity").to_pylist()
        times = [t // 1000 for t in table.column("_event_time").cast(pa.int64()).to_pylist()]
        if not json_fields and (extra is None or not any(extra)):
            # the common case, at C speed: a null stays a None value, which the
            # window engine reads as absent (it asks data.get(field))
            rows = zip(*cols, strict=True) if cols else ((),) * len(entities)
            for entity, t, row in zip(entities, times, rows, strict=True):
                yield ParsedEvent(entity, t, dict(zip(fields, row, strict=True)))
            return
        for i, row in enumerate(zip(*cols, strict=True) if cols else ((),) * len(entities)):
            data = {f: v for f, v in zip(fields, row, strict=True) if v is not None}
            for name in json_fields:
                if name in data:
                    data[name] = _loads(data[name])
            if extra is not None and extra[i] is not None:
                data.update(_loads(extra[i]))
            yield ParsedEvent(entities[i], times[i], data)


def columns_for(
    groups: Iterable[FeatureGroup], source_key: str, have: Collection[str]
) -> list[str]:
    """The columns a reader of ``groups``' events selects from a table with columns ``have``.

    The fields the groups aggregate (and the entity key of a group keyed by
    another field than the source's ``source_key``) that the table has, then
    what :meth:`LogLayout.events` and an offset order need.
    """
    wanted: set[str] = set()
    for group in groups:
        g = group.layout
        wanted |= set(g.value_fields) | set(g.distinct_fields) | set(g.last_fields)
        if group.entity_key != source_key:
            wanted.add(group.entity_key)
    return [*sorted(n for n in wanted if n in have), *_READ_META]


def day_of(ms: int) -> dt.date:
    """The UTC date of an epoch-milliseconds time (the ``event_date`` partition)."""
    return _EPOCH + dt.timedelta(days=ms // _DAY_MS)


class OfflineLog:
    """The tables of a log root: a local directory or a URL the deltalake library
    supports (``s3://``, ``gs://``, ``az://``), credentials from the environment
    (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``, as deltalake reads them)."""

    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})

    def table_uri(self, source: str) -> str:
        return f"{self.root}/{source}"

    def _table(self, source: str) -> Any:
        from deltalake import DeltaTable

        uri = self.table_uri(source)
        try:
            if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options or None):
                return None
            return DeltaTable(uri, storage_options=self.storage_options or None)
        except OSError as exc:
            raise TransientError(f"offline log {uri}: {exc}") from exc

    def exists(self, source: str) -> bool:
        return self._table(source) is not None

    def positions(self, source: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The last offset written per partition (-1: none)."""
        table = self._table(source)
        out = {}
        for p in partitions:
            version = None if table is None else table.transaction_version(f"{topic}/{p}")
            out[p] = -1 if version is None else int(version)
        return out

    def watermarks(
        self, source: str, topic: str, partitions: Sequence[int]
    ) -> dict[int, int | None]:
        """The newest event time written per partition (its watermark; ``None``: none),
        from one scan of the table's event times."""
        out: dict[int, int | None] = dict.fromkeys(partitions)
        if not partitions or not self.exists(source):
            return out
        import polars as pl

        try:
            newest = (
                self.scan(source)
                .filter((pl.col("_topic") == topic) & pl.col("_partition").is_in(list(partitions)))
                .group_by("_partition")
                .agg(pl.col("_event_time").dt.epoch("ms").max())
                .collect()
            )
        except (pl.exceptions.PolarsError, OSError) as exc:  # the store: unreachable, a file gone
            raise TransientError(f"offline log {self.table_uri(source)}: {exc}") from exc
        for p, t in newest.iter_rows():
            out[int(p)] = None if t is None else int(t)
        return out

    def append(
        self, source: str, table: pa.Table, written: Mapping[tuple[str, int], tuple[int, int]]
    ) -> None:
        """Commit ``table`` with, per (topic, partition), (last offset before, last offset now).

        Refused with :class:`LogFenceError`, nothing written, when a partition's
        stored offset is not the one this writer expects or another writer
        commits the same partition meanwhile.
        """
        from deltalake import CommitProperties, Transaction, write_deltalake
        from deltalake.exceptions import (
            CommitFailedError,
            DeltaError,
            DeltaProtocolError,
            SchemaMismatchError,
        )

        current = self._table(source)
        for (topic, p), (before, _) in written.items():
            stored = -1 if current is None else current.transaction_version(f"{topic}/{p}")
            stored = -1 if stored is None else int(stored)
            if stored != before:
                raise LogFenceError(
                    f"offline log {self.table_uri(source)}: {topic}/{p} is at offset {stored}, "
                    f"this writer expected {before} (another writer took the partition)"
                )
        txns = [Transaction(f"{topic}/{p}", now) for (topic, p), (_, now) in written.items()]
        target = current if current is not None else self.table_uri(source)
        try:
            write_deltalake(
                target,
                table,
                mode="append",
                partition_by=[PARTITION_COLUMN],
                schema_mode="merge",
                commit_properties=CommitProperties(app_transactions=txns),
                storage_options=self.storage_options or None,
            )
        except CommitFailedError as exc:
            if "oncurrent" in str(exc):
                raise LogFenceError(f"offline log {self.table_uri(source)}: {exc}") from exc
            raise TransientError(f"offline log {self.table_uri(source)}: {exc}") from exc
        except (SchemaMismatchError, DeltaProtocolError) as exc:
            # a contract change the table cannot take (a column changed its type)
            raise PermanentError(f"offline log {self.table_uri(source)}: {exc}") from exc
        except (DeltaError, OSError) as exc:  # the store: a full disk, a network error
            raise TransientError(f"offline log {self.table_uri(source)}: {exc}") from exc

    def dates(self, source: str) -> list[tuple[dt.date, int]]:
        """The event dates the table holds, oldest first, with their rows (from the
        commit log's file statistics: no data is read)."""
        table = self._table(source)
        if table is None:
            return []
        actions = pa.table(table.get_add_actions(flatten=True))
        rows: dict[dt.date, int] = {}
        days = actions.column(f"partition.{PARTITION_COLUMN}").to_pylist()
        for day, n in zip(days, actions.column("num_records").to_pylist(), strict=True):
            rows[day] = rows.get(day, 0) + (n or 0)
        return sorted(rows.items())

    def compact(self, source: str) -> tuple[int, int]:
        """Rewrite each event date's small files into few large ones (Delta's optimize);
        returns (files removed, files added).  Rows, and the offsets each partition is
        at, are unchanged; appends may go on meanwhile.  The files replaced stay
        until a vacuum (``DeltaTable.vacuum``) removes them."""
        from deltalake.exceptions import DeltaError

        table = self._table(source)
        if table is None:
            return 0, 0
        try:
            metrics = table.optimize.compact()
        except (DeltaError, OSError) as exc:
            raise TransientError(f"offline log {self.table_uri(source)}: {exc}") from exc
        return int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"])

    def scan(self, source: str) -> pl.LazyFrame:
        """The table as a polars lazy frame (filters and column choices are pushed down)."""
        import polars as pl

        return pl.scan_delta(self.table_uri(source), storage_options=self.storage_options or None)
