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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from sinks.feature_store import RedisFeatureStore, offsets_key
from streams.settings import Settings

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
            ends = await consumer.end_offsets(tps) if tps else {}
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
    """The partitions that hold a record at (or, compacted, after) the wanted offset."""
    consumer.assign(list(wanted))
    for tp, offset in wanted.items():
        consumer.seek(tp, offset)
    found: set[TopicPartition] = set()
    deadline = time.monotonic() + FETCH_CONFIRM_S
    while len(found) < len(wanted) and time.monotonic() < deadline:
        try:
            batch = await consumer.getmany(timeout_ms=500)
        except Exception:  # out of range (below the log start: retention), or similar
            break
        for tp, records in batch.items():
            if any(r.offset >= wanted[tp] for r in records):
                found.add(tp)
                consumer.pause(tp)
    return found


async def stored_offsets(settings: Settings) -> dict[str, dict[int, int]]:
    """Every source's stored offsets (partition -> last applied offset)."""
    from streams.clients import redis_client

    client = redis_client(settings)
    store = RedisFeatureStore(client, prefix=settings.redis.key_prefix)
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
    sources = sorted({a.source for a in ahead})
    return (
        "Redis holds offsets beyond the end of their partitions:\n"
        f"{lines}\n"
        "This Redis was used with another broker or an older topic of the same name; the "
        "worker would skip every record up to those offsets as already applied. Point "
        "redis.url or redis.key_prefix at the right Redis, or forget the stored offsets "
        "(the features already stored stay) with:\n"
        + "\n".join(
            f"  driftline offsets reset -c {config or 'CONFIG'} --source {s}" for s in sources
        )
    )


def run_check(settings: Settings) -> list[OffsetAhead]:
    return asyncio.run(check_offsets(settings))
