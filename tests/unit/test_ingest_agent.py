"""The source agent keeps two batches in work: in order per partition, acknowledged when durable.

The agent is driven with an async iterator of batches and doubles of the
pipeline (whose ``process`` awaits a random number of loop turns, as a Redis
write would) and of the app (``ack_batch``, ``crash``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from faust.types import TP

from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.worker.app import _make_agent
from driftline.streams.worker.health import WorkerHealth
from driftline.streams.worker.records import RawRecord
from driftline.streams.worker.transport import RecordBatch


class Pipeline:
    source = "tx"

    def __init__(self, rng: random.Random, fail_at: tuple[int, int] | None = None) -> None:
        self.rng = rng
        self.fail_at = fail_at
        self.running: set[int] = set()  # partitions with a batch in process
        self.most_at_once = 0
        self.done: list[tuple[int, int]] = []  # (partition, first offset) in completion order
        self.events: list[str] = []

    async def process(self, records: list[RawRecord]) -> None:
        partition, first = records[0].partition, records[0].offset
        assert partition not in self.running, "two batches of one partition at once"
        self.running.add(partition)
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            for _ in range(self.rng.randint(0, 5)):
                await asyncio.sleep(0)
            if (partition, first) == self.fail_at:
                raise RuntimeError("redis said no")
            self.done.append((partition, first))
            self.events.append(f"done {partition}:{first}")
        finally:
            self.running.discard(partition)


class App:
    consumer_generation_id = 1

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.acked: list[tuple[int, int]] = []
        self.crashed: list[BaseException] = []

    def ack_batch(self, batch: RecordBatch) -> bool:
        key = (batch.tp.partition, batch.records[0].offset)
        assert key in self.pipeline.done, "acknowledged before its effects were durable"
        self.acked.append(key)
        self.pipeline.events.append(f"ack {key[0]}:{key[1]}")
        return True

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


def batches(rng: random.Random, n: int) -> list[RecordBatch]:
    next_offset = [0, 0, 0]
    out = []
    for _ in range(n):
        p = rng.randrange(3)
        first = next_offset[p]
        next_offset[p] += 10
        records = [RawRecord("tx", p, first + i, 0, None, b"{}", ()) for i in range(10)]
        out.append(RecordBatch(TP("tx", p), 1, records))
    return out


async def stream_of(items: list[RecordBatch]) -> AsyncIterator[RecordBatch]:
    for item in items:
        yield item


def run(pipeline: Pipeline, items: list[RecordBatch], in_flight: int) -> App:
    app = App(pipeline)
    agent = _make_agent(app, pipeline, WorkerHealth(), WorkerMetrics(["tx"]), in_flight)  # type: ignore[arg-type]
    asyncio.run(agent(stream_of(items)))  # type: ignore[arg-type]
    return app


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_batches_run_in_order_per_partition_and_are_acked_after_their_effects(
    seed: int, in_flight: int
) -> None:
    rng = random.Random(seed)
    items = batches(rng, 30)
    pipeline = Pipeline(rng)
    app = run(pipeline, items, in_flight)
    want = [(b.tp.partition, b.records[0].offset) for b in items]
    assert sorted(app.acked) == sorted(want)
    for p in range(3):
        # per partition: processed and acknowledged in offset order
        assert [k for k in pipeline.done if k[0] == p] == [k for k in want if k[0] == p]
        assert [k for k in app.acked if k[0] == p] == [k for k in want if k[0] == p]
    assert pipeline.most_at_once <= in_flight
    assert not app.crashed


def test_two_partitions_are_in_work_at_once() -> None:
    pipeline = Pipeline(random.Random(0))
    items = [b for b in batches(random.Random(5), 40)]
    run(pipeline, items, 2)
    assert pipeline.most_at_once == 2


def test_a_failed_batch_stops_its_partition_and_the_worker() -> None:
    rng = random.Random(3)
    items = batches(rng, 30)
    failing = items[10]
    key = (failing.tp.partition, failing.records[0].offset)
    pipeline = Pipeline(rng, fail_at=key)
    app = run(pipeline, items, 2)
    assert len(app.crashed) == 1
    assert key not in app.acked
    # nothing of that partition after the failed batch is processed or acknowledged
    later = [(b.tp.partition, b.records[0].offset) for b in items[11:] if b.tp == failing.tp]
    assert not set(later) & (set(pipeline.done) | set(app.acked))
    # and no batch that came after the failure is started
    assert len(pipeline.done) <= 12


def test_stopping_cancels_what_is_in_work_without_acknowledging_it() -> None:
    started = asyncio.Event()

    class Slow(Pipeline):
        async def process(self, records: list[RawRecord]) -> None:
            started.set()
            await asyncio.sleep(3600)

    pipeline = Slow(random.Random(0))
    app = App(pipeline)
    agent = _make_agent(app, pipeline, WorkerHealth(), WorkerMetrics(["tx"]), 2)  # type: ignore[arg-type]

    async def main() -> Any:
        task = asyncio.ensure_future(agent(stream_of(batches(random.Random(1), 5))))  # type: ignore[arg-type]
        await started.wait()
        task.cancel()
        return await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert app.acked == []
