"""``driftline backfill``: fill a new feature group version from the offline log and the topic.

A new version (``version: 2``) starts empty: its windows hold only what the
workers wrote since they started it.  The backfill writes the rest, the
accepted events the workers applied *before* they wrote the version live,
into the same Redis keys.  It reads them from the offline log (``driftline
archive``), and where the log does not reach back (it starts after the
topic's oldest retained record, or there is none), from the topic itself,
judged as the worker judges them (:mod:`driftline.streams.backfill_topic`).

**The seam.**  The first write of a version on a partition records, in the
same atomic script, the stored offset it started after: its *live mark*
(per shard on a sharded store; a worker also marks every partition it is
assigned, so a quiet partition gets one too;
:meth:`~driftline.sinks.feature_store.RedisFeatureStore.mark_live`).  Every
later write of the partition carries the version, so the live writes hold
exactly the events *after* the mark, and the backfill applies exactly the
events *at or below* it: no gap, nothing twice.  The mark is fixed once set, so
the backfill's set of events is fixed too, whenever it runs and however often
it is restarted.  It requires every worker of the source to run a config with
the version (a worker without it would write the partition without it); the
docs say so.

**Order, and why.**  Window merges commute, but a ``last`` value on a tie of
event times goes to the later record.  The live writes hold the later records,
so the backfill walks each partition backwards (days newest first, offsets
descending within a day: equal event times share a day) and its writes
replace a stored ``last`` only when strictly newer; within one write the
events go in offset order, so there too the later record wins.  The records
read from the topic are older (lower offsets) than every record of the log, so
they come last, newest offset first.

**The plan.**  Per partition, the first offset read from the log (below it:
the topic) is chosen by the first run and kept in the progress record, so a
resumed run reads the same events in the same order even if an archiver has
filled the log below meanwhile.

**Exactly once, resumable.**  The backfill is a writer with its own fence per
partition (``{source}:backfill:{group}:v{N}`` in the store's offsets hashes):
each write moves it, in the same script, to the *rank* of the last event
written in the order above, compare-and-set like the worker's offsets.  After a
crash (``kill -9``) the next run skips the ranks already applied.

**Progress.**  A bar with rate and ETA on stderr, and the registry's
``v{N}:backfill`` record (state, events, total), which ``driftline registry``
shows and ``driftline registry activate`` reads.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from driftline.features.batch import build_batch
from driftline.features.catalog import format_ms
from driftline.features.definitions import FeatureGroup
from driftline.features.durations import parse_duration
from driftline.features.engine import rekey
from driftline.features.exceptions import FeatureDefinitionError
from driftline.features.keys import shard_of
from driftline.features.registry import BackfillProgress, backfill_field
from driftline.features.state import Delta
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import PartitionState, RedisFeatureStore
from driftline.sinks.offline_log import LogLayout, OfflineLog, columns_for
from driftline.sinks.redis_client import REDIS_ERRORS
from driftline.sinks.registry_store import read_deployed
from driftline.streams.backfill_topic import (
    CHUNK,
    Segment,
    TopicReader,
    describe,
    plan_log_from,
    short_history,
)
from driftline.streams.clients import feature_store, redis_client
from driftline.streams.errors import ConfigError, DriftlineError
from driftline.streams.settings import Settings
from driftline.streams.sources import Sources, build_sources, declared_types
from driftline.streams.worker.retry import Backoff, until_done

__all__ = ["BackfillReport", "backfill", "parse_from"]

log = logging.getLogger(__name__)

#: How often the registry's progress record is written.
_PROGRESS_EVERY_S = 1.0
#: Rows of the log turned into Python events at a time.
_CHUNK = CHUNK


class BackfillError(DriftlineError):
    """A backfill that cannot run (said in words, exit code 2)."""


@dataclass(frozen=True)
class BackfillReport:
    group: str
    version: int
    #: events of the log at or below the live marks since ``from_ms`` (all runs)
    total: int
    #: of those, applied by this run
    applied: int
    #: already applied by an earlier run (resumed)
    resumed: int
    seconds: float
    from_ms: int
    #: of ``total``, events read from the topic (the log does not hold them)
    from_topic: int = 0

    @property
    def rate(self) -> float:
        return self.applied / self.seconds if self.seconds > 0 else 0.0


def parse_from(text: str | None, group: FeatureGroup, now_ms: int) -> int:
    """``--from``: an ISO 8601 time (``2026-11-01T00:00Z``) or a duration ago (``36h``).

    Default: the group's TTL ago (longest window + allowed lateness): no read at
    or after now can see an older event.
    """
    if text is None:
        return now_ms - group.ttl_ms
    try:
        return now_ms - parse_duration(text)
    except (FeatureDefinitionError, ValueError):
        pass
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--from {text!r}: expected an ISO 8601 time such as 2026-11-01T00:00Z, "
            "or a duration ago such as 36h"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return int(at.timestamp() * 1000)


def pick_version(sources: Sources, name: str, version: int | None) -> FeatureGroup:
    """The configured group version to fill (default: the newest configured)."""
    candidates = [g for g in sources.all_groups() if g.name == name]
    if not candidates:
        known = ", ".join(sorted({g.name for g in sources.all_groups()})) or "none"
        raise ConfigError(f"--group {name}: no such feature group in the config (known: {known})")
    if version is None:
        return max(candidates, key=lambda g: g.version)
    for g in candidates:
        if g.version == version:
            return g
    have = ", ".join(str(g.version) for g in sorted(candidates, key=lambda g: g.version))
    raise ConfigError(
        f"--version {version}: the config defines {name} in version(s) {have}; "
        "add the new version to feature_groups (beside the old one) and start the workers first"
    )


def backfill_source(source: str, group: FeatureGroup) -> str:
    """The name the backfill's own fences are kept under (never a source's: it has ':')."""
    return f"{source}:backfill:{group.name}:v{group.version}"


async def backfill(
    settings: Settings,
    origin: str,
    group_name: str,
    version: int | None = None,
    *,
    from_text: str | None = None,
    progress: bool = True,
    wait_s: float = 300.0,
    max_entities: int = 500,
    max_rate: float | None = None,
    now_ms: Callable[[], int] | None = None,
    echo: Callable[[str], None] | None = None,
) -> BackfillReport:
    """Fill ``group_name`` (``version``) from the offline log up to its live marks.

    ``max_entities``: entities per Redis script (a script blocks the Redis it runs
    on, and the live writes and reads wait behind it); ``max_rate``: events per
    second at most, to leave Redis to the live path.
    """
    clock = now_ms or (lambda: int(time.time() * 1000))
    say = echo or (lambda text: print(text, file=sys.stderr))
    sources = build_sources(settings, origin)
    group = pick_version(sources, group_name, version)
    from_ms = parse_from(from_text, group, clock())
    client = redis_client(settings)
    store = feature_store(settings, client)
    job = _Job(
        settings,
        sources,
        store,
        group,
        from_ms,
        from_given=from_text is not None,
        max_entities=max_entities,
        max_rate=max_rate,
        say=say,
        clock=clock,
    )
    try:
        return await job.run(progress=progress, wait_s=wait_s)
    except REDIS_ERRORS as exc:
        raise BackfillError(
            f"Redis failed during the backfill: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await client.aclose()


class _Job:
    def __init__(
        self,
        settings: Settings,
        sources: Sources,
        store: RedisFeatureStore,
        group: FeatureGroup,
        from_ms: int,
        *,
        from_given: bool,
        max_entities: int,
        max_rate: float | None,
        say: Callable[[str], None],
        clock: Callable[[], int],
    ) -> None:
        self.sources = sources
        self.store = store
        self.group = group
        self.source = group.source
        self.topic = next(s.topic for s in settings.sources if s.name == group.source)
        self.from_ms = from_ms
        #: --from was given (else an earlier run's start is kept)
        self.from_given = from_given
        self.max_entities = max_entities
        self.max_rate = max_rate
        self.say = say
        self.clock = clock
        self.fence = backfill_source(group.source, group)
        self.settings = settings
        self.source_settings = next(s for s in settings.sources if s.name == group.source)
        #: per partition, the first offset read from the log (below it: the topic)
        self._log_from: dict[int, int] = {}
        #: per partition, the oldest offset the first run read from the topic
        self._topic_from: dict[int, int] = {}
        self._reader: TopicReader | None = None
        self._t0 = time.monotonic()
        self.log = OfflineLog(settings.offline.path)
        self.layout = LogLayout.from_declared(declared_types(sources.parsers[group.source]))
        self.backoff = Backoff(0.2, 5.0)
        self._written_at = 0.0
        self._started_ms = clock()
        self._read = 0  # events read (or applied by an earlier run), of _total
        self._total = 0
        self._paced = 0  # events written since _pace_start
        self._pace_start: float | None = None  # after the first write
        self._bar: Any = None

    # -- preconditions --------------------------------------------------------

    async def _record(self) -> BackfillProgress | None:
        """Check the registry record of the version; the progress of an earlier run."""
        g = self.group
        versions, _ = await read_deployed(
            self.store.client, self.store.prefix, [g.name], scan=False
        )
        record = next((v for v in versions if v.version == g.version), None)
        if record is None:
            raise BackfillError(
                f"{g.name} v{g.version} is not deployed: no worker has started it.  Start the "
                "workers with this config first: they write the version live from then on, "
                "and the backfill fills what came before"
            )
        if record.fingerprint != g.fingerprint():
            raise BackfillError(
                f"{g.name} v{g.version} is deployed with another definition (fingerprint "
                f"{record.fingerprint[:12]}, this config {g.fingerprint()[:12]}): use the "
                "workers' config"
            )
        if not record.marked:
            raise BackfillError(
                f"{g.name} v{g.version} was deployed by a driftline without live marks, so "
                "where its live writes start is unknown: bump the version and backfill the new one"
            )
        held = record.backfill
        if held is not None and not self.from_given:
            self.from_ms = held.from_ms  # the default: resume (or confirm) what was started
        if held is not None and held.from_ms != self.from_ms:
            if held.state == "done":
                raise BackfillError(
                    f"{g.name} v{g.version} is backfilled already (from "
                    f"{format_ms(held.from_ms)}); a version is backfilled once"
                )
            raise BackfillError(
                f"a backfill of {g.name} v{g.version} from {format_ms(held.from_ms)} was started "
                f"and not finished: resume it with --from {iso_ms(held.from_ms)}"
            )
        return held

    async def _partitions(self) -> list[int]:
        """The source's partitions the workers have applied records of."""
        return sorted(
            p for p, o in (await self.store.stored_offsets(self.source)).items() if o >= 0
        )

    async def _marks(self, partitions: list[int], wait_s: float) -> dict[int, int]:
        """Per partition, per shard: the live marks (waits until all are set)."""
        shards = self.store.layout.shards
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            marks = await self.store.live_marks(self.source, self.group, partitions)
            partial = [p for p in partitions if 0 < len(marks.get(p, {})) < shards]
            if partial:
                # A worker writes the version on these partitions (a shard is marked), but
                # some shards had no record of them since: mark those where their fence
                # stands, as the worker's next write there would.
                for p in partial:
                    await self.store.mark_live(self.source, p, [self.group])
                marks = await self.store.live_marks(self.source, self.group, partitions)
            missing = [p for p in partitions if len(marks.get(p, {})) < shards]
            if not missing:
                self._shard_marks = marks
                return {p: max(marks[p].values()) for p in partitions}
            if time.monotonic() >= deadline:
                raise BackfillError(
                    f"no worker has started {self.group.name} v{self.group.version} on "
                    f"partition(s) {_few(missing)} of source {self.source} within {wait_s:.0f} s: "
                    "run every worker of the source with this config (a worker marks where it "
                    "starts writing a version when it is assigned a partition)"
                )
            if not said:
                self.say(
                    f"waiting for the workers to start v{self.group.version} on partition(s) "
                    f"{_few(missing)}"
                )
                said = True
            await asyncio.sleep(0.5)

    async def _no_gaps(self, partitions: list[int], *, during: bool = False) -> None:
        """Refuse a version some worker wrote partitions without, after its live mark."""
        gaps = await self.store.live_gaps(self.source, self.group, partitions)
        if not gaps:
            return
        g = self.group
        where = "; ".join(
            f"partition {p} (offsets in {min(a for _, a, _ in spans) + 1}-"
            f"{max(t for _, _, t in spans)})"
            for p, spans in sorted(gaps.items())
        )
        when = "while the backfill ran" if during else "after its live mark"
        raise BackfillError(
            f"a worker whose config lacks {g.name} v{g.version} wrote {where} {when} (a "
            f"rolling restart, or a worker with an old config?): v{g.version} misses those "
            "events, and they cannot be added in order afterwards.  Run every worker of "
            f"source {self.source} with the config, then add the definition as a new version "
            "and backfill that one"
        )

    async def _log_reaches(self, tops: Mapping[int, int], wait_s: float) -> None:
        """Wait until the offline log holds every partition up to its mark."""
        if not self.log.exists(self.source):
            raise BackfillError(
                f"no offline log of source {self.source} at {self.log.table_uri(self.source)}: "
                "run `driftline archive` beside the workers (it writes offline.path); the "
                "backfill reads the accepted events from it"
            )
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            held = await asyncio.to_thread(
                self.log.positions, self.source, self.topic, sorted(tops)
            )
            behind = [p for p, top in tops.items() if held.get(p, -1) < top]
            if not behind:
                return
            if time.monotonic() >= deadline:
                raise BackfillError(
                    f"the offline log of source {self.source} has not reached the live marks of "
                    f"partition(s) {_few(behind)} within {wait_s:.0f} s: is `driftline archive` "
                    "running?"
                )
            if not said:
                self.say(f"waiting for the archiver to reach partition(s) {_few(behind)}")
                said = True
            await asyncio.sleep(0.5)

    # -- the work ---------------------------------------------------------------

    def _scan(self, tops: Mapping[int, int]) -> pl.LazyFrame:
        cond = _offsets(tops, self._log_from)
        since = pl.lit(self.from_ms).cast(pl.Datetime("ms", "UTC"))
        return (
            self.log.scan(self.source)
            .filter(pl.col("_topic") == self.topic)
            .filter(cond)
            .filter(pl.col("_event_time") >= since)
        )

    def _counts(self, tops: Mapping[int, int]) -> dict[tuple[Any, int], int]:
        """Events per (day, partition) to backfill."""
        frame = (
            self._scan(tops)
            .group_by(["event_date", "_partition"])
            .agg(pl.len().alias("n"))
            .collect()
        )
        return {(day, int(p)): int(n) for day, p, n in frame.iter_rows()}

    def _log_firsts(self, tops: Mapping[int, int]) -> dict[int, tuple[int, int | None]]:
        """Per partition in the log: its first offset, its oldest event time up to the mark."""
        if not tops or not self.log.exists(self.source):
            return {}
        cond = _offsets(tops, {})
        frame = (
            self.log.scan(self.source)
            .filter(pl.col("_topic") == self.topic)
            .filter(pl.col("_partition").is_in(list(tops)))
            .group_by("_partition")
            .agg(
                pl.col("_offset").min().alias("first"),
                pl.col("_event_time").filter(cond).dt.epoch("ms").min().alias("oldest"),
            )
            .collect()
        )
        return {
            int(p): (int(first), None if oldest is None else int(oldest))
            for p, first, oldest in frame.iter_rows()
            if first is not None
        }

    async def _check_history(
        self,
        tops: Mapping[int, int],
        firsts: Mapping[int, tuple[int, int | None]],
        segments: Mapping[int, Segment],
        wait_s: float,
    ) -> None:
        """Refuse when neither the log nor the topic holds a partition's history since --from.

        The oldest time a partition's history holds: its oldest accepted event's,
        else (every record read refused) its oldest record's timestamp; when
        nothing at or below the mark is left (the topic dropped it all, and the
        log never had it), the timestamp of the oldest record the topic keeps.
        """
        short: list[tuple[int, int | None]] = []
        gone: dict[int, int] = {}
        for p, top in tops.items():
            segment = segments.get(p)
            times: list[int] = []
            first: int | None = None
            if segment is not None and segment.records:
                first = segment.first
                t = segment.oldest_ms if segment.oldest_ms is not None else segment.oldest_record_ms
                if t is not None:
                    times.append(t)
            if self._log_from[p] <= top:
                first = self._log_from[p] if first is None else first
                log_oldest = firsts.get(p, (0, None))[1]
                if log_oldest is not None:
                    times.append(log_oldest)
            if first is None and segment is not None:
                gone[p] = segment.first  # nothing up to the mark is left anywhere
            elif first is not None and short_history(
                first, min(times) if times else None, self.from_ms
            ):
                short.append((p, min(times) if times else None))
        if gone and self._reader is not None:
            stamps = await self._reader.first_timestamps(gone, max(wait_s, 30.0))
            for p, first in gone.items():
                if short_history(first, stamps.get(p), self.from_ms):
                    short.append((p, stamps.get(p)))
        if short:
            known = [t for _, t in short if t is not None]
            since = -(-max(known, default=0) // 1000) * 1000  # the next whole second
            advice = (
                f"Backfill from where they start with --from {iso_ms(since)}, knowing "
                "windows reaching before it are short"
                if len(known) == len(short)
                else "Nothing older is left to read"
            )
            raise BackfillError(
                f"neither the offline log nor topic {self.topic} holds partition(s) "
                f"{_few(sorted(p for p, _ in short))} of source {self.source} back to --from: "
                f"what they hold starts after it, older records were dropped.  {advice}"
            )

    def _lost(self, segments: Mapping[int, Segment], base: Mapping[int, int], states: Any) -> None:
        """Say which records the topic dropped since the first run before they were written."""
        kept = self._topic_from
        for p, segment in sorted(segments.items()):
            was = kept.get(p)
            if was is None or segment.first <= was:
                continue
            written = segment.rank(base.get(p, 0), 0) - states[p].offset  # lowest offset written
            upto = min(segment.first, written) - 1
            if upto >= was:
                self.say(
                    f"note: topic {self.topic} dropped partition {p}'s records at offsets "
                    f"{was}-{upto} (retention) after the first run and before this backfill "
                    f"wrote them: v{self.group.version} misses their events"
                )

    async def _read_topic(
        self,
        tops: Mapping[int, int],
        spool: Path,
        progress: bool,
        wait_s: float,
    ) -> dict[int, Segment]:
        """The records below the log, read from the topic into ``spool``."""
        below = {p: b for p, b in self._log_from.items() if b > 0 and p in tops}
        if not below:
            return {}
        reader = TopicReader(
            self.settings,
            self.source_settings,
            self.sources.parsers[self.source],
            self.sources.quality.get(self.source),
            self.layout,
            from_ms=self.from_ms,
            spool=spool,
        )
        self._reader = reader
        earliest = await reader.earliest(sorted(below))
        segments = {p: Segment(p, earliest.get(p, 0), b) for p, b in below.items()}
        for p, segment in segments.items():
            if segment.records:
                self._topic_from.setdefault(p, segment.first)
        reading = {p: s for p, s in segments.items() if s.records}
        if reading:
            self.say(
                f"reading {describe(reading)} of topic {self.topic}: the offline log does not "
                "hold them"
            )
            with tqdm(
                total=sum(s.records for s in reading.values()),
                unit="rec",
                desc=f"reading {self.topic}",
                file=sys.stderr,
                disable=not progress or None,
            ) as bar:
                await reader.read(reading, stall_s=max(wait_s, 30.0), on_records=bar.update)
        return segments

    async def run(self, *, progress: bool, wait_s: float) -> BackfillReport:
        await self.store.check_layout()
        held = await self._record()
        if held is not None:
            self._started_ms = held.started_ms
            self._topic_from = dict(held.topic_from or {})
        partitions = await self._partitions()
        if held is not None and held.state == "done":  # nothing left: say so, read nothing
            await self._no_gaps(partitions)
            g = self.group
            total = held.total if held.total is not None else held.events
            return BackfillReport(g.name, g.version, total, 0, held.events, 0.0, self.from_ms)
        tops = await self._marks(partitions, wait_s) if partitions else {}
        await self._no_gaps(partitions)
        tops = {p: top for p, top in tops.items() if top >= 0}
        firsts = await asyncio.to_thread(self._log_firsts, tops)
        self._log_from = plan_log_from(
            tops,
            {p: first for p, (first, _) in firsts.items()},
            held.log_from if held is not None else None,
        )
        log_part = {p: top for p, top in tops.items() if self._log_from[p] <= top}
        if log_part:
            await self._log_reaches(log_part, wait_s)
        self._t0 = time.monotonic()  # the rate counts reading the topic too
        with tempfile.TemporaryDirectory(prefix="driftline-backfill-") as spool:
            segments = await self._read_topic(tops, Path(spool), progress, wait_s)
            if held is None:  # a resumed run goes on with what is left
                await self._check_history(tops, firsts, segments, wait_s)
            counts: dict[tuple[Any, int], int] = {}
            if log_part:
                counts = await asyncio.to_thread(self._counts, log_part)
            return await self._walk(tops, log_part, counts, segments, progress)

    async def _walk(
        self,
        tops: Mapping[int, int],
        log_part: Mapping[int, int],
        counts: Mapping[tuple[Any, int], int],
        segments: Mapping[int, Segment],
        progress: bool,
    ) -> BackfillReport:
        """Apply the log's events (days newest first), then the topic's (newest first)."""
        g = self.group
        from_topic = {p: s.count for p, s in segments.items()}
        total = sum(counts.values()) + sum(from_topic.values())
        states = {p: await self.store.partition_state(self.fence, p) for p in tops}
        done_before = 0
        for p, state in states.items():
            done_before += min(state.offset + 1, _of(counts, p))
            if p in segments:
                done_before += await asyncio.to_thread(
                    segments[p].done, _of(counts, p), state.offset
                )
        self._lost(segments, {p: _of(counts, p) for p in segments}, states)
        self._read, self._total = done_before, total
        await self._progress("running", done_before, total, force=True)
        started = self._t0
        applied = 0
        with tqdm(
            total=total,
            initial=done_before,
            unit="ev",
            desc=f"{g.name} v{g.version}",
            file=sys.stderr,
            disable=not progress or None,
        ) as self._bar:
            # ranks so far per partition: the rows of newer days
            before: dict[int, int] = dict.fromkeys(tops, 0)
            for day in sorted({d for d, _ in counts}, reverse=True):
                todo = [
                    p
                    for p in log_part
                    if (n := counts.get((day, p), 0)) and states[p].offset < before[p] + n - 1
                ]
                if todo:
                    frame = await asyncio.to_thread(
                        self._read_day, day, {p: log_part[p] for p in todo}
                    )
                    for p in todo:
                        rows = frame.filter(pl.col("_partition") == p)
                        dense = range(before[p], before[p] + rows.height)
                        applied += await self._apply_rows(p, rows, dense, states)
                for p in tops:
                    before[p] += counts.get((day, p), 0)
            # then the records below the log, read from the topic: spool files newest
            # first, ranked by offset (Segment.rank)
            for p, segment in sorted(segments.items()):
                base = before[p]
                for index in reversed(range(len(segment.files))):
                    lowest = segment.files[index][2]
                    if states[p].offset < segment.rank(base, lowest):
                        rows = await asyncio.to_thread(segment.rows, index)
                        ranks = [segment.rank(base, o) for o in rows["_offset"].to_list()]
                        applied += await self._apply_rows(p, rows, ranks, states)
        seconds = time.monotonic() - started
        await self._no_gaps(sorted(tops), during=True)
        await self._progress("done", total, total, force=True)
        return BackfillReport(
            g.name,
            g.version,
            total,
            applied,
            done_before,
            seconds,
            self.from_ms,
            sum(from_topic.values()),
        )

    def _read_day(self, day: Any, tops: Mapping[int, int]) -> pl.DataFrame:
        """One day of the partitions' events, newest offset first."""
        lf = self._scan(tops).filter(pl.col("event_date") == day)
        source_key = self.sources.parsers[self.source].entity_key
        columns = columns_for([self.group], source_key, lf.collect_schema().names())
        return (
            lf.select(columns).sort(["_partition", "_offset"], descending=[False, True]).collect()
        )

    async def _apply_rows(
        self,
        partition: int,
        rows: pl.DataFrame,
        ranks: Sequence[int],
        states: dict[int, PartitionState],
    ) -> int:
        """Apply rows of a partition (newest offset first, ``ranks`` ascending).

        Rows ranked at or below the checkpoint were applied by an earlier run.
        Events become Python objects :data:`_CHUNK` rows at a time (they take ten
        times the memory of the columns); a write is at most ``max_entities``
        entities and never spans two chunks.
        """
        skip = bisect.bisect_right(ranks, states[partition].offset)
        applied = 0
        for lo in range(skip, rows.height, _CHUNK):
            chunk = rows.slice(lo, _CHUNK)
            applied += await self._apply_chunk(partition, chunk, ranks[lo : lo + _CHUNK], states)
        return applied

    async def _apply_chunk(
        self,
        partition: int,
        rows: pl.DataFrame,
        ranks: Sequence[int],
        states: dict[int, PartitionState],
    ) -> int:
        group = self.group
        state = states[partition]
        marks = self._shard_marks[partition]
        shards = self.store.layout.shards
        source_key = self.sources.parsers[self.source].entity_key
        offsets = rows["_offset"].to_list()
        events = list(self.layout.events(rows.to_arrow()))
        if group.entity_key != source_key:
            keyed, kept = rekey(events, group.entity_key)
            entities: list[str | None] = [None] * len(events)
            for event, i in zip(keyed, kept, strict=True):
                entities[i] = event.entity
                events[i] = event
        else:
            entities = [e.entity for e in events]
        applied = 0
        start = 0
        while start < len(events):
            # a write: at most max_entities entities (one short script per shard)
            seen: set[str] = set()
            end = start
            while end < len(events):
                e = entities[end]
                if e is not None and e not in seen:
                    if len(seen) == self.max_entities:
                        break
                    seen.add(e)
                end += 1
            chosen: list[ParsedEvent] = []
            for i in range(end - 1, start - 1, -1):  # offset order within the write
                entity = entities[i]
                if entity is None:
                    continue
                shard = shard_of(entity, shards)
                if offsets[i] <= marks.get(shard, -1) and ranks[i] > state.ahead.get(shard, -1):
                    chosen.append(events[i])
            deltas = [(group, build_batch(group, chosen))]
            state = await self._write(partition, state, ranks[end - 1], deltas)
            states[partition] = state
            applied += len(chosen)
            self._bar.update(end - start)
            self._read += end - start
            await self._pace(end - start)
            await self._progress("running", self._read, self._total)
            start = end
        return applied

    async def _pace(self, events: int) -> None:
        """Sleep as long as ``max_rate`` asks."""
        if not self.max_rate:
            return
        if self._pace_start is None:  # the clock starts after the first write, not before
            self._pace_start = time.monotonic()  # the waits for marks and the log
            return
        self._paced += events
        ahead = self._paced / self.max_rate - (time.monotonic() - self._pace_start)
        if ahead > 0:
            await asyncio.sleep(ahead)

    async def _write(
        self,
        partition: int,
        state: PartitionState,
        rank: int,
        deltas: Sequence[tuple[FeatureGroup, Mapping[str, Delta]]],
    ) -> PartitionState:
        store = self.store

        async def write() -> tuple[bool, int]:
            return await store.apply(
                self.fence,
                partition,
                expected_offset=state.offset,
                new_offset=rank,
                watermark_ms=None,
                deltas=deltas,
                ahead=state.ahead,
                marks=False,
                strict_last=True,
            )

        ok, stored = await until_done(
            write,
            what=f"redis for the backfill of {self.group.name} v{self.group.version}",
            backoff=self.backoff,
            sleep=asyncio.sleep,
        )
        if not ok and stored != rank:
            raise BackfillError(
                f"another backfill of {self.group.name} v{self.group.version} is writing "
                f"partition {partition} (its checkpoint moved to {stored}): run one at a time"
            )
        return state.after(rank, None)

    async def _progress(
        self, state: str, events: int, total: int | None, force: bool = False
    ) -> None:
        now = time.monotonic()
        if not force and now - self._written_at < _PROGRESS_EVERY_S:
            return
        self._written_at = now
        record = BackfillProgress(
            "done" if state == "done" else "running",
            events,
            total,
            self.from_ms,
            self._started_ms,
            self.clock(),
            self._log_from,
            self._topic_from,
        )
        key = self.store.layout.registry_key(self.group.name)
        await self.store.client.hset(key, backfill_field(self.group.version), record.to_record())


def _offsets(tops: Mapping[int, int], lows: Mapping[int, int]) -> pl.Expr:
    """Rows of each partition from its ``lows`` offset (else 0) up to its ``tops`` one."""
    cond = pl.lit(False)
    for p, top in tops.items():
        rows = (pl.col("_partition") == p) & (pl.col("_offset") <= top)
        cond = cond | (rows & (pl.col("_offset") >= lows[p]) if p in lows else rows)
    return cond


def _of(counts: Mapping[tuple[Any, int], int], partition: int) -> int:
    return sum(n for (_, p), n in counts.items() if p == partition)


def _few(items: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in items[:8])
    return shown + (f" and {len(items) - 8} more" if len(items) > 8 else "")


def iso_ms(ms: int) -> str:
    """``2026-11-01T00:00:00Z``: a time as ``--from`` takes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
