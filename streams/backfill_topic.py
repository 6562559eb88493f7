"""The backfill's reader of a topic's retained records, where the offline log does not reach back.

The offline log starts where ``driftline archive`` started: a source archived
only recently (or not at all, or by an archiver that started at the end of
the topic) has older records in the topic alone.  The backfill then reads
them from the topic, *segment* by segment: per partition, from the oldest
retained record to the first offset the log holds (or to the live mark, when
the log holds nothing of the partition).

**Verdicts.**  The records are judged as the worker and the archiver judge
them (:func:`~driftline.streams.worker.verdicts.judge`): the contract, the
quality routing, then event time against the watermark.  The watermark at the
start of a segment is the one the worker had there only when the segment
starts at offset 0 (the topic still holds its first record); after the topic
has dropped old records it is unknown, and the segment is judged from none,
like an archiver or a worker starting on that topic: an event more than
``allowed_lateness`` behind records already dropped counts here although the
worker refused it as late.

**Spool.**  A segment is read forwards (the watermark needs offset order) and
applied backwards (a ``last`` value on a tie of event times goes to the later
record), so its accepted events since ``--from`` wait on local disk, in the
offline log's columns (Arrow IPC files of at most :data:`CHUNK` rows,
compressed), in a temporary directory the backfill removes when it ends.  At
most a few thousand accepted events (and no record bodies) wait in memory as
objects, over all partitions; they are appended to each partition's open
spool file as columns.

**Ranks.**  The backfill's checkpoint is a rank; a record read from the topic
ranks by its offset alone (:meth:`Segment.rank`), not by its place among the
accepted ones, so a resumed run that judges some records differently (the
topic dropped old records in between, and the watermark starts elsewhere)
still skips exactly the offsets written before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from driftline.drift.quality import QualityChecker
from driftline.features.durations import parse_duration
from driftline.schemas import EventParser, ParsedEvent
from driftline.sinks.offline_log import LogLayout
from driftline.streams.errors import DriftlineError
from driftline.streams.settings import Settings, SourceSettings
from driftline.streams.worker.records import RawRecord
from driftline.streams.worker.verdicts import judge

__all__ = ["CHUNK", "Segment", "TopicError", "TopicReader", "TopicStalled"]

#: Accepted events per spool file (and per batch of Python events when applied).
CHUNK = 50_000
#: Records fetched at a time.
_FETCH = 20_000
#: Accepted events waiting as Python objects, over all partitions, before they are
#: appended to the spool files as columns.
_WAITING = 5_000


class TopicError(DriftlineError):
    """The topic cannot be read (said in words)."""


class TopicStalled(TopicError):
    """The broker returned no record of a segment for too long."""


class _Pos(NamedTuple):
    """Where an accepted event came from (what the log's columns keep of a record)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass
class Segment:
    """One partition's records read from the topic: offsets ``first`` to ``below - 1``."""

    partition: int
    #: the oldest retained record's offset (where reading starts)
    first: int
    #: the first offset not read (the log holds the partition from here, or the mark + 1)
    below: int
    #: spool files of accepted events since ``--from``, ascending offsets:
    #: (path, rows, lowest offset, highest offset)
    files: list[tuple[Path, int, int, int]] = field(default_factory=list)
    #: the oldest accepted event time read (before the ``--from`` filter)
    oldest_ms: int | None = None
    #: the oldest record timestamp read (any verdict)
    oldest_record_ms: int | None = None

    @property
    def count(self) -> int:
        return sum(f[1] for f in self.files)

    @property
    def records(self) -> int:
        return max(0, self.below - self.first)

    def rank(self, base: int, offset: int) -> int:
        """The checkpoint rank of ``offset``: ``base`` (the log's events of the
        partition) for the newest record read, one more per offset below."""
        return base + self.below - 1 - offset

    def done(self, base: int, checkpoint: int) -> int:
        """Spooled events already written (rank at or below ``checkpoint``)."""
        lowest = base + self.below - 1 - checkpoint  # offsets at or above it are written
        n = 0
        for index, (_, rows, lo, hi) in enumerate(self.files):
            if lo >= lowest:
                n += rows
            elif hi >= lowest:
                n += sum(1 for o in self.rows(index)["_offset"].to_list() if o >= lowest)
        return n

    def rows(self, index: int) -> pl.DataFrame:
        """Spool file ``index``'s rows, newest offset first."""
        path = self.files[index][0]
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        return pl.from_arrow(table).reverse()  # type: ignore[return-value]


class TopicReader:
    """Reads segments of one source's topic into a spool directory."""

    def __init__(
        self,
        settings: Settings,
        source: SourceSettings,
        parser: EventParser,
        quality: QualityChecker | None,
        layout: LogLayout,
        *,
        from_ms: int,
        spool: Path,
    ) -> None:
        self.settings = settings
        self.source = source
        self.parser = parser
        self.quality = quality
        self.layout = layout
        self.from_ms = from_ms
        self.spool = spool
        self.allowed_lateness_ms = parse_duration(source.allowed_lateness)
        self.future_tolerance_ms = parse_duration(source.future_tolerance)
        self._options = pa.ipc.IpcWriteOptions(compression="lz4")

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
            **self.settings.kafka.aiokafka_kwargs(),
        )

    async def _start(self) -> AIOKafkaConsumer:
        consumer = self._consumer()
        try:
            await consumer.start()
            if consumer.partitions_for_topic(self.source.topic) is None:
                await _close(consumer)
                raise TopicError(
                    f"topic {self.source.topic} (source {self.source.name}) does not exist on "
                    f"{self.settings.kafka.bootstrap_servers}"
                )
        except KafkaError as exc:
            await _close(consumer)
            raise TopicError(self._failed(exc)) from exc
        return consumer

    def _failed(self, exc: BaseException) -> str:
        return (
            f"reading topic {self.source.topic} from {self.settings.kafka.bootstrap_servers} "
            f"failed: {type(exc).__name__}: {exc}"
        )

    async def earliest(self, partitions: Sequence[int]) -> dict[int, int]:
        """The oldest retained offset of each partition."""
        consumer = await self._start()
        try:
            tps = [TopicPartition(self.source.topic, p) for p in partitions]
            firsts = await consumer.beginning_offsets(tps)
            return {tp.partition: int(o) for tp, o in firsts.items()}
        except KafkaError as exc:
            raise TopicError(self._failed(exc)) from exc
        finally:
            await consumer.stop()

    async def first_timestamps(self, firsts: Mapping[int, int], stall_s: float) -> dict[int, int]:
        """The timestamp of the record at each partition's given offset (its oldest)."""
        if not firsts:
            return {}
        topic = self.source.topic
        consumer = await self._start()
        out: dict[int, int] = {}
        try:
            tps = {p: TopicPartition(topic, p) for p in firsts}
            consumer.assign(list(tps.values()))
            for p, offset in firsts.items():
                consumer.seek(tps[p], offset)
            deadline = time.monotonic() + stall_s
            while len(out) < len(firsts) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500, max_records=len(firsts))
                for tp, messages in batch.items():
                    if messages and tp.partition not in out:
                        out[tp.partition] = int(messages[0].timestamp)
                        consumer.pause(tp)
        except KafkaError as exc:
            raise TopicError(self._failed(exc)) from exc
        finally:
            await consumer.stop()
        return out

    async def read(
        self,
        segments: Mapping[int, Segment],
        *,
        stall_s: float,
        on_records: Callable[[int], None] = lambda n: None,
    ) -> None:
        """Read, judge and spool every segment (``on_records``: records read, for a bar)."""
        todo = {p: s for p, s in segments.items() if s.records > 0}
        if not todo:
            return
        topic = self.source.topic
        consumer = await self._start()
        pending = {p: _Pending() for p in todo}
        try:
            tps = {p: TopicPartition(topic, p) for p in todo}
            consumer.assign(list(tps.values()))
            for p, segment in todo.items():
                consumer.seek(tps[p], segment.first)
            at = {p: s.first for p, s in todo.items()}
            moved = time.monotonic()
            while todo:
                batch = await consumer.getmany(timeout_ms=500, max_records=_FETCH)
                for tp, messages in batch.items():
                    open_segment = todo.get(tp.partition)
                    if open_segment is None or not messages:
                        continue
                    segment = open_segment
                    records = [RawRecord.of(m) for m in messages if m.offset < segment.below]
                    if records:
                        moved = time.monotonic()
                        self._take(segment, pending[tp.partition], records)
                for p in list(todo):
                    position = min(await consumer.position(tps[p]), todo[p].below)
                    if position > at[p]:  # by offsets: a gap in them counts as read
                        on_records(position - at[p])
                        at[p] = position
                    if position >= todo[p].below:
                        self._spill(todo[p], pending[p], close=True)
                        consumer.pause(tps[p])
                        del todo[p]
                        moved = time.monotonic()
                if sum(len(x.events) for x in pending.values()) >= _WAITING:
                    for p, waiting in pending.items():  # memory: few events wait as objects
                        self._spill(segments[p], waiting)
                if todo and time.monotonic() - moved > stall_s:
                    at = {p: await consumer.position(tps[p]) for p in todo}
                    where = ", ".join(
                        f"{p} (at offset {at[p]}, reading to {s.below - 1})"
                        for p, s in todo.items()
                    )
                    raise TopicStalled(
                        f"the broker returned no record of topic {topic} partition(s) {where} "
                        f"for {stall_s:.0f} s: is it reachable, and are the records still there?"
                    )
        except KafkaError as exc:
            raise TopicError(self._failed(exc)) from exc
        finally:
            for waiting in pending.values():
                waiting.discard()
            await consumer.stop()

    def _take(self, segment: Segment, pending: _Pending, records: Sequence[RawRecord]) -> None:
        result, pending.watermark_ms = judge(
            self.parser,
            self.quality,
            segment.partition,
            records,
            pending.watermark_ms,
            judge_time=True,
            allowed_lateness_ms=self.allowed_lateness_ms,
            future_tolerance_ms=self.future_tolerance_ms,
        )
        stamp = min(r.timestamp_ms for r in records)
        if segment.oldest_record_ms is None or stamp < segment.oldest_record_ms:
            segment.oldest_record_ms = stamp
        for event, record in zip(result.valid, result.valid_records, strict=True):
            t = event.event_time_ms
            if segment.oldest_ms is None or t < segment.oldest_ms:
                segment.oldest_ms = t
            if t >= self.from_ms:
                pending.events.append(event)
                pending.positions.append(
                    _Pos(record.topic, record.partition, record.offset, record.timestamp_ms)
                )

    def _spill(self, segment: Segment, pending: _Pending, *, close: bool = False) -> None:
        """Append what waits of a segment to its open spool file; a file is closed (and
        listed) at :data:`CHUNK` rows, or when the segment is read (``close``)."""
        try:
            if pending.events:
                table = self.layout.to_table(pending.events, pending.positions)
                first, last = pending.positions[0].offset, pending.positions[-1].offset
                pending.events, pending.positions = [], []
                if pending.writer is None:
                    pending.path = self.spool / f"p{segment.partition}-{len(segment.files):06d}"
                    pending.sink = pa.OSFile(str(pending.path), "wb")
                    pending.writer = pa.ipc.new_file(
                        pending.sink, table.schema, options=self._options
                    )
                    pending.rows, pending.lo = 0, first
                pending.writer.write_table(table)
                pending.rows += table.num_rows
                pending.hi = last
            if pending.writer is not None and (close or pending.rows >= CHUNK):
                pending.writer.close()
                assert pending.sink is not None and pending.path is not None
                pending.sink.close()
                segment.files.append((pending.path, pending.rows, pending.lo, pending.hi))
                pending.writer = pending.sink = None
        except OSError as exc:
            raise TopicError(
                f"cannot write the backfill's spool file {pending.path} (the accepted events "
                f"read from the topic wait there; set TMPDIR to a directory with room): {exc}"
            ) from exc


async def _close(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer whose start may have failed half-way (its stop then fails too)."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:  # its own coordinator task, never started
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except KafkaError:
        pass


@dataclass
class _Pending:
    """A segment being read: its watermark, the events waiting, its open spool file."""

    watermark_ms: int | None = None
    events: list[ParsedEvent] = field(default_factory=list)
    positions: list[_Pos] = field(default_factory=list)
    path: Path | None = None
    sink: Any = None
    writer: Any = None
    rows: int = 0
    lo: int = 0
    hi: int = 0

    def discard(self) -> None:
        """Close an open spool file (after a failure: the directory is removed anyway)."""
        for handle in (self.writer, self.sink):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()
        self.writer = self.sink = None


def plan_log_from(
    tops: Mapping[int, int], log_first: Mapping[int, int], kept: Mapping[int, int] | None
) -> dict[int, int]:
    """Per partition, the first offset the backfill reads from the log (below: the topic).

    ``tops``: the highest live mark of each partition; ``log_first``: the log's
    first offset of each partition it holds; ``kept``: an earlier run's plan,
    which a resumed run keeps (the log may have grown below since: an archiver
    started meanwhile), so it reads the same events in the same order.
    """
    plan: dict[int, int] = {}
    for p, top in tops.items():
        if kept is not None and p in kept:
            plan[p] = kept[p]
        elif p in log_first:
            plan[p] = min(log_first[p], top + 1)
        else:
            plan[p] = top + 1  # nothing of it in the log: all from the topic
    return plan


def short_history(first_available: int, oldest_ms: int | None, from_ms: int) -> bool:
    """Whether a partition's history since ``from_ms`` may be incomplete.

    Neither the log nor the topic holds the partition from offset 0
    (``first_available`` > 0), and the oldest time they hold (an accepted
    event's, else a record's timestamp; ``None``: nothing at all) is after
    ``from_ms``: older events since ``from_ms`` may have been dropped.
    """
    return first_available > 0 and (oldest_ms is None or oldest_ms > from_ms)


def describe(segments: Mapping[int, Segment]) -> str:
    """``p0 offsets 0-1233, p2 offsets 10-99``: what is read from the topic."""
    return ", ".join(
        f"p{p} offsets {s.first}-{s.below - 1}" for p, s in sorted(segments.items()) if s.records
    )
