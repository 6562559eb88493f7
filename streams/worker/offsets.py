"""Offsets stored in Redis that lie beyond the end of their partitions.

The worker skips every record at or below the offset stored with a
partition's features (an exactly-once replay).  If that offset belongs to
another topic's history (this Redis was used with another broker, or the
topic was deleted and created again), every new record would be skipped as a
replay, silently, until the new partition caught up with the old offset.

So before it starts, the worker compares each stored offset with its
partition: a partition that no longer exists, or an offset past the
partition's last record, stops the start-up with the keys and how to reset.
The end offset alone cannot decide it: the embedded broker (Tansu) reports
the start of the last batch, so an offset at or past it is checked by
fetching that very record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from driftline.sinks.feature_store import offsets_key
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)

#: How long the confirming fetch waits for the record at a stored offset.
FETCH_CONFIRM_S = 5.0


@dataclass(frozen=True)
class OffsetAhead:
    source: str
    topic: str
    partition: int
    stored: int
    end: int | None  # None: the partition does not exist
    key: str

    def describe(self) -> str:
        where = (
            "the partition does not exist"
            if self.end is None
            else f"the partition holds offsets below {self.end}"
        )
        return (
            f"source {self.source}: {self.topic}/{self.partition} stored offset {self.stored} "
            f"but {where} (Redis key {self.key}, field p{self.partition})"
        )


async def find_offsets_ahead(
    settings: Settings, stored: Mapping[str, Mapping[int, int]]
) -> list[OffsetAhead]:
    """The stored offsets (per source, partition -> offset) past their partition's end."""
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        **settings.kafka.aiokafka_kwargs(),
    )
    await consumer.start()
    try:
        ahead: list[OffsetAhead] = []
        suspects: dict[TopicPartition, OffsetAhead] = {}
        for source in settings.sources:
            offsets = stored.get(source.name, {})
            if not offsets:
                continue
            key = offsets_key(settings.redis.key_prefix, source.name)
            partitions = consumer.partitions_for_topic(source.topic) or set()
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(source.topic) or set()
            tps = [TopicPartition(source.topic, p) for p in sorted(partitions)]
            try:
                ends = await consumer.end_offsets(tps) if tps else {}
            except Exception as exc:  # a leaderless partition mid-restart: do not block start
                log.warning(
                    "cannot read the end offsets of %s (%s: %s); stored offsets not checked",
                    source.topic,
                    type(exc).__name__,
                    exc,
                )
                continue
            for partition, offset in sorted(offsets.items()):
                if offset < 0:
                    continue
                tp = TopicPartition(source.topic, partition)
                if partition not in partitions:
                    if partitions:  # (no partitions: the topic is missing, said elsewhere)
                        ahead.append(
                            OffsetAhead(source.name, source.topic, partition, offset, None, key)
                        )
                    continue
                end = int(ends[tp])
                if offset < end:
                    continue
                suspects[tp] = OffsetAhead(source.name, source.topic, partition, offset, end, key)
        if suspects:
            found = await _records_at(consumer, {tp: a.stored for tp, a in suspects.items()})
            ahead += [a for tp, a in suspects.items() if tp not in found]
        return ahead
    finally:
        await consumer.stop()


async def _records_at(consumer: Any, wanted: Mapping[TopicPartition, int]) -> set[TopicPartition]:
    """The partitions where the wanted offset is no offset past the end.

    That is: a record is there (or after it, compacted), or the offset lies
    below the log start (retention removed it: the stored offset is old, not
    ahead).  Each partition is decided on its own.
    """
    consumer.assign(list(wanted))
    for tp, offset in wanted.items():
        consumer.seek(tp, offset)
    found: set[TopicPartition] = set()
    deadline = time.monotonic() + FETCH_CONFIRM_S
    while len(found) < len(wanted) and time.monotonic() < deadline:
        try:
            batch = await consumer.getmany(timeout_ms=500)
        except OffsetOutOfRangeError as exc:
            out_of_range = [tp for tp in (exc.args[0] if exc.args else {}) if tp in wanted]
            if not out_of_range:
                break
            starts = await consumer.beginning_offsets(out_of_range)
            for tp in out_of_range:
                if wanted[tp] < starts[tp]:
                    found.add(tp)  # below the log start: retention
                consumer.pause(tp)  # decided either way
            continue
        except Exception as exc:
            log.warning("cannot confirm stored offsets (%s: %s)", type(exc).__name__, exc)
            return set(wanted)  # unknown: never refuse a start on a guess
        for tp, records in batch.items():
            if any(r.offset >= wanted[tp] for r in records):
                found.add(tp)
                consumer.pause(tp)
    return found


async def stored_offsets(settings: Settings) -> dict[str, dict[int, int]]:
    """Every source's stored offsets (partition -> last applied offset)."""
    from driftline.streams.clients import feature_store, redis_client

    client = redis_client(settings)
    store = feature_store(settings, client)
    try:
        return {s.name: await store.stored_offsets(s.name) for s in settings.sources}
    finally:
        await client.aclose()


async def check_offsets(settings: Settings) -> list[OffsetAhead]:
    stored = await stored_offsets(settings)
    if not any(stored.values()):
        return []  # nothing stored yet (a first start, or no feature groups)
    return await find_offsets_ahead(settings, stored)


def ahead_message(ahead: list[OffsetAhead], config: str) -> str:
    lines = "\n".join(f"  - {a.describe()}" for a in ahead)
    by_source: dict[str, list[int]] = {}
    for a in ahead:
        by_source.setdefault(a.source, []).append(a.partition)
    return (
        "Redis holds offsets beyond the end of their partitions:\n"
        f"{lines}\n"
        "This Redis was used with another broker or an older topic of the same name; the "
        "worker would skip every record up to those offsets as already applied. Point "
        "redis.url or redis.key_prefix at the right Redis, or forget the stored offsets "
        "(the features already stored stay) with:\n"
        + "\n".join(
            f"  driftline offsets reset -c {config or 'CONFIG'} --source {source}"
            + "".join(f" --partition {p}" for p in sorted(parts))
            for source, parts in sorted(by_source.items())
        )
    )


def run_check(settings: Settings) -> list[OffsetAhead]:
    return asyncio.run(check_offsets(settings))
