"""Send a JSON Lines file to a topic (``driftline produce``), with a progress bar.

Lines are sent byte for byte (without the line break), invalid ones included:
this is how a producer team replays samples, good and bad, against the worker.
The record key is the value of ``key_field`` when the line is a JSON object
that has it, else no key.  The topic must exist: a misspelt ``--topic`` is
refused with the topics there are, before anything is sent (a broker that
creates topics on first use would otherwise take the whole file quietly).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from tqdm import tqdm

from driftline.streams.errors import DriftlineError
from driftline.streams.topics import wait_for_broker

#: Topics named in the message about a missing one; the rest are counted.
SHOWN_TOPICS = 10


def key_of(line: bytes, key_field: str | None) -> bytes | None:
    if key_field is None:
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get(key_field) is None:
        return None
    value = obj[key_field]
    return (value if isinstance(value, str) else orjson.dumps(value).decode()).encode()


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\r\n")
            if line:
                yield line


def missing_topic(topic: str, existing: Collection[str], bootstrap: str) -> str:
    """Why *topic* is refused: what there is instead, and the closest names."""
    names = sorted(t for t in existing if not t.startswith("__"))
    close = difflib.get_close_matches(topic, names, n=3)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    if names:
        more = len(names) - SHOWN_TOPICS
        listed = ", ".join(names[:SHOWN_TOPICS]) + (f" and {more} more" if more > 0 else "")
        there = f"its topics: {listed}"
    else:
        there = "it has no topics yet"
    return (
        f"topic {topic!r} does not exist on Kafka at {bootstrap}{hint}; {there}. "
        "Pass --topic with an existing topic, or create it first."
    )


async def produce_file(
    kafka_kwargs: Mapping[str, Any],
    topic: str,
    path: Path,
    *,
    key_field: str | None,
    startup_timeout_s: float = 15.0,
    origin: str = "",
) -> int:
    """Send the lines of *path* to *topic*; how many.  The topic must exist."""
    total = sum(1 for _ in _lines(path))
    bootstrap = str(kafka_kwargs.get("bootstrap_servers"))
    existing = await wait_for_broker(kafka_kwargs, timeout_s=startup_timeout_s, origin=origin)
    if topic not in existing:
        raise DriftlineError(missing_topic(topic, existing, bootstrap))
    producer = AIOKafkaProducer(**kafka_kwargs, linger_ms=10, acks="all", enable_idempotence=False)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise DriftlineError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    sent = 0
    try:
        with tqdm(total=total, unit="ev", desc=f"-> {topic}", file=sys.stderr, disable=None) as bar:
            pending = []
            for line in _lines(path):
                pending.append(await producer.send(topic, line, key=key_of(line, key_field)))
                if len(pending) >= 1000:
                    for fut in pending:
                        await fut
                    bar.update(len(pending))
                    sent += len(pending)
                    pending.clear()
            for fut in pending:
                await fut
            bar.update(len(pending))
            sent += len(pending)
    finally:
        await producer.stop()
    return sent
