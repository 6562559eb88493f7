"""Send a JSON Lines file to a topic (``driftline produce``), with a progress bar.

Lines are sent byte for byte (without the line break), invalid ones included:
this is how a producer team replays samples, good and bad, against the worker.
The record key is the value of ``key_field`` when the line is a JSON object
that has it, else no key.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from tqdm import tqdm

from streams.errors import DriftlineError


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


async def produce_file(
    kafka_kwargs: Mapping[str, Any], topic: str, path: Path, *, key_field: str | None
) -> int:
    total = sum(1 for _ in _lines(path))
    producer = AIOKafkaProducer(**kafka_kwargs, linger_ms=10, acks="all", enable_idempotence=False)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise DriftlineError(
            f"cannot reach Kafka at {kafka_kwargs.get('bootstrap_servers')}: {exc}"
        ) from None
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
