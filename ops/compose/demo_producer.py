"""Demo transactions for the docker-compose stack, sent at a steady rate.

Runs in the driftline image (service ``producer`` of docker-compose.yml) and
uses :class:`driftline.streams.local.demo.DemoEvents`, the generator of ``driftline dev``: Zipf-like
users, log-normal amounts per category, a small share of deliberately broken
records (one of each kind the contracts refuse), and optionally a drift: after
``--drift-after`` seconds every amount is 80 % higher, so the monitors open an
incident and DriftIncidentOpen fires.

It waits for the topic to exist (the worker creates it) instead of letting the
broker auto-create it with the wrong partition count.  Options default to the
environment (``DEMO_*``, ``DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS``), so compose
needs no command line::

    python ops/compose/demo_producer.py --bootstrap 127.0.0.1:9094 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from driftline.streams.local.demo import DemoEvents

#: Amounts are multiplied by this after ``--drift-after`` seconds.
DRIFT_FACTOR = 1.8
#: Pacing tick: events due are sent in one burst per tick.
TICK_S = 0.05


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description="Send demo transactions to Kafka at a steady rate."
    )
    parser.add_argument(
        "--bootstrap",
        default=env("DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (env DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS)",
    )
    parser.add_argument("--topic", default=env("DEMO_TOPIC", "transactions"), help="env DEMO_TOPIC")
    parser.add_argument(
        "--rate",
        type=float,
        default=float(env("DEMO_RATE", "100")),
        help="events per second; 0 sends as fast as possible (env DEMO_RATE)",
    )
    parser.add_argument(
        "--invalid-ratio",
        type=float,
        default=float(env("DEMO_INVALID_RATIO", "0.02")),
        help="share of broken records (env DEMO_INVALID_RATIO)",
    )
    parser.add_argument(
        "--drift-after",
        type=float,
        default=float(env("DEMO_DRIFT_AFTER_S", "0")),
        help="seconds until amounts rise by 80 %%; 0: never (env DEMO_DRIFT_AFTER_S)",
    )
    parser.add_argument(
        "--max-event-bytes",
        type=int,
        default=int(env("DEMO_MAX_EVENT_BYTES", "65536")),
        help="the source's max_event_bytes: oversize demo records just exceed it",
    )
    parser.add_argument(
        "--count", type=int, default=0, help="stop after this many events; 0: until SIGTERM"
    )
    parser.add_argument(
        "--wait-topic-s", type=float, default=180.0, help="how long to wait for the topic"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the demo generator")
    args = parser.parse_args(argv)
    if args.rate < 0 or not 0 <= args.invalid_ratio <= 1 or args.count < 0:
        parser.error("--rate and --count must be >= 0, --invalid-ratio within [0, 1]")
    return args


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] demo: {message}", flush=True)


async def wait_for_topic(bootstrap: str, topic: str, timeout_s: float) -> None:
    """Return once ``topic`` exists; raise ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            if topic in set(await admin.list_topics()):
                return
        except (KafkaConnectionError, KafkaError) as exc:
            if not announced:
                say(f"Kafka at {bootstrap} not reachable yet ({exc}); waiting")
                announced = True
        finally:
            await admin.close()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"topic {topic} does not exist after {timeout_s:.0f}s "
                "(the worker creates it when kafka.create_topics is true)"
            )
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Send events until ``stop`` is set or ``--count`` are sent; return the count."""
    await wait_for_topic(args.bootstrap, args.topic, args.wait_topic_s)
    demo = DemoEvents(seed=args.seed, max_event_bytes=args.max_event_bytes)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        linger_ms=5,
        acks="all",
        max_request_size=max(1 << 20, 2 * args.max_event_bytes),
    )
    await producer.start()
    say(
        f"sending to {args.topic} at {args.rate or 'max'} events/s, "
        f"{args.invalid_ratio:.0%} broken"
        + (f", amounts +80 % after {args.drift_after:g}s" if args.drift_after > 0 else "")
    )
    sent = invalid = 0
    started = last_report = time.monotonic()
    try:
        while not stop.is_set() and (args.count == 0 or sent < args.count):
            now = time.monotonic()
            if (
                args.drift_after > 0
                and demo.amount_factor == 1.0
                and now - started >= args.drift_after
            ):
                demo.amount_factor = DRIFT_FACTOR
                say("amounts are now 80 % higher: a drift for the monitors to find")
            due = int((now - started) * args.rate) - sent if args.rate > 0 else 1000
            if args.count:
                due = min(due, args.count - sent)
            pending = []
            for _ in range(max(0, min(due, 10_000))):
                if demo.rng.random() < args.invalid_ratio:
                    _, key, value = demo.invalid()
                    invalid += 1
                else:
                    key, value = demo.valid()
                pending.append(await producer.send(args.topic, value, key=key))
            if pending:
                await asyncio.gather(*pending)
                sent += len(pending)
            if now - last_report >= 10:
                say(f"sent {sent} events ({invalid} broken)")
                last_report = now
            if args.rate > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=TICK_S)
    finally:
        await producer.stop()
    say(f"done: sent {sent} events ({invalid} broken)")
    return sent


async def main_async(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(args, stop)
    except (TimeoutError, KafkaError) as exc:
        print(f"demo producer: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
