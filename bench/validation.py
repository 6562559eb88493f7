"""Validation throughput against a raw aiokafka decode loop, in one run.

    python bench/validation.py [--events 200000] [--bootstrap HOST:PORT]

Produces N demo transactions (1 % invalid) to a fresh 4-partition topic on
the embedded broker (or ``--bootstrap``), then reads them back four ways:

1. ``raw``        plain aiokafka consumer, ``orjson.loads`` per record: the baseline;
2. ``validate``   aiokafka consumer + driftline's per-batch ``classify`` (decode,
                  contract, entity/event-time extraction), no sinks;
3. ``faust``      a Faust agent in a child process, + ``classify``, no sinks:
                  stock Faust delivery with ``take_events``, and driftline's
                  partition-batch delivery (``streams/worker/transport.py``, the worker's path);
4. in-memory engines: fastjsonschema vs jsonschema on the same decoded events.

Rates are events/s; the ratio to ``raw`` from the same run is the figure to
compare across machines (they are shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from driftline.schemas import build_parser
from driftline.streams.local.demo import DemoEvents
from driftline.streams.worker.records import RawRecord, classify

CONTRACT = ROOT / "schemas" / "contracts" / "transactions.schema.json"


def parser():
    return build_parser(
        encoding="json",
        contract_path=CONTRACT,
        entity_key="user_id",
        event_time_field="event_time",
        event_time_unit="ms",
        max_event_bytes=1 << 16,
    )


def make_events(n: int) -> list[tuple[bytes, bytes]]:
    demo = DemoEvents(seed=1, max_event_bytes=1 << 16)
    out = []
    for i in range(n):
        if i % 100 == 99:
            _, key, value = demo.invalid(["wrong_type", "missing_field", "malformed_json"][i % 3])
            out.append((key, value))
        else:
            out.append(demo.valid(now_ms=1_700_000_000_000 + i))
    return out


async def produce(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    from driftline.streams.topics import ensure_topics

    await ensure_topics({"bootstrap_servers": bootstrap}, {topic: 4})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending = []
        for key, value in events:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def consume(bootstrap: str, topic: str, n: int, mode: str) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=32 << 20,
    )
    await consumer.start()
    p = parser()
    seen = 0
    t0 = None
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
            if t0 is None and batch:
                t0 = time.perf_counter()
            for messages in batch.values():
                if mode == "raw":
                    for m in messages:
                        try:
                            orjson.loads(m.value)
                        except orjson.JSONDecodeError:
                            pass
                else:
                    classify(
                        p,
                        [
                            RawRecord(
                                m.topic,
                                m.partition,
                                m.offset,
                                m.timestamp,
                                m.key,
                                m.value,
                                m.headers,
                            )
                            for m in messages
                        ],
                    )
                seen += len(messages)
    finally:
        await consumer.stop()
    assert t0 is not None
    return n / (time.perf_counter() - t0)


def faust_child(bootstrap: str, topic: str, n: int) -> None:
    """Run in a child process: a Faust agent with take_events + classify."""
    import logging

    import faust

    logging.basicConfig(level=logging.WARNING)
    from driftline.streams.worker.transport import App as BatchApp

    batch_mode = os.environ.get("BENCH_FAUST_MODE", "batch") == "batch"
    app_class = BatchApp if batch_mode else faust.App
    app = app_class(
        f"bench-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=5,
        broker_max_poll_records=5000,
        stream_buffer_maxsize=5000,
        datadir=f"/tmp/driftline-bench-{os.getpid()}",
    )
    topic_t = app.topic(
        f"unused-{topic}" if batch_mode else topic, key_type=bytes, value_type=bytes
    )
    p = parser()
    state = {"n": 0, "t0": 0.0}

    def done(n_now: int) -> None:
        if n_now >= n:
            rate = n_now / (time.perf_counter() - state["t0"])
            print(json.dumps({"faust": rate}), flush=True)
            os._exit(0)

    if batch_mode:
        channel = app.batch_channel(topic)

        @app.agent(channel)
        async def ingest_batches(stream):  # type: ignore[no-untyped-def]
            async for batch in stream:
                if not state["n"]:
                    state["t0"] = time.perf_counter()
                classify(p, batch.records)
                app.ack_batch(batch)
                state["n"] += len(batch.records)
                done(state["n"])

    @app.agent(topic_t)
    async def ingest(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(5000, within=0.2):
            if not state["n"]:
                state["t0"] = time.perf_counter()
            classify(
                p,
                [
                    RawRecord(
                        e.message.topic,
                        e.message.partition,
                        e.message.offset,
                        int(e.message.timestamp * 1000),
                        e.message.key,
                        e.message.value,
                        (),
                    )
                    for e in events
                ],
            )
            state["n"] += len(events)
            if state["n"] >= n:
                rate = state["n"] / (time.perf_counter() - state["t0"])
                print(json.dumps({"faust": rate}), flush=True)
                os._exit(0)

    faust.Worker(
        app, loglevel="warning", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


def engines(events: list[tuple[bytes, bytes]]) -> dict[str, float]:
    import fastjsonschema
    from jsonschema import Draft202012Validator

    schema = orjson.loads(CONTRACT.read_bytes())
    docs = []
    for _, v in events[:50000]:
        try:
            docs.append(orjson.loads(v))
        except orjson.JSONDecodeError:
            pass
    fast = fastjsonschema.compile(schema, use_formats=False)
    exact = Draft202012Validator(schema)
    out = {}
    t0 = time.perf_counter()
    for d in docs:
        try:
            fast(d)
        except fastjsonschema.JsonSchemaValueException:
            pass
    out["fastjsonschema"] = len(docs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for d in docs:
        exact.is_valid(d)
    out["jsonschema"] = len(docs) / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of the embedded one")
    ap.add_argument(
        "--faust-child", nargs=3, metavar=("BOOTSTRAP", "TOPIC", "N"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.faust_child:
        faust_child(args.faust_child[0], args.faust_child[1], int(args.faust_child[2]))
        return

    from driftline.streams.local.embedded import EmbeddedBroker

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    try:
        n = args.events
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        print(f"generating {n} events ...", file=sys.stderr)
        events = make_events(n)
        secs = asyncio.run(produce(bootstrap, topic, events))
        print(f"produced {n} to {topic} in {secs:.1f}s", file=sys.stderr)
        results: dict[str, float] = {}
        for mode in ("raw", "validate"):
            print(f"measuring {mode} ...", file=sys.stderr)
            results[mode] = asyncio.run(consume(bootstrap, topic, n, mode))
        for mode, label in (
            ("stock", "faust take_events + validate"),
            ("batch", "faust batches + validate"),
        ):
            print(f"measuring {label} ...", file=sys.stderr)
            child = subprocess.run(
                [sys.executable, __file__, "--faust-child", bootstrap, topic, str(n)],
                capture_output=True,
                text=True,
                timeout=900,
                env={**os.environ, "BENCH_FAUST_MODE": mode},
            )
            for line in child.stdout.splitlines():
                if '{"faust"' in line:  # Faust's terminal codes may precede it
                    results[label] = json.loads(line[line.index('{"faust"') :])["faust"]
            if label not in results:
                print(child.stderr[-3000:], file=sys.stderr)
        # the baseline again, to show the noise of the machine during the run
        results["raw (again)"] = asyncio.run(consume(bootstrap, topic, n, "raw"))
        memory = engines(events)
    finally:
        if broker is not None:
            broker.stop()
    raw = results["raw"]
    print(f"\n{'path':<34}{'events/s':>12}{'ratio to raw':>14}")
    for name, rate in results.items():
        print(f"{name:<34}{rate:>12,.0f}{rate / raw:>14.3f}")
    print(f"\nin-memory schema engines on {min(n, 50000)} decoded events (validation only):")
    for name, rate in memory.items():
        print(f"  {name:<32}{rate:>12,.0f} events/s")


if __name__ == "__main__":
    main()
