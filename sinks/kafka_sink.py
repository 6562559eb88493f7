"""Buffered Kafka output (dead letters, monitored values, drift alerts).

Buffer with ``add()``, write and wait on ``flush()``: ``flush()`` returns only
once every record of the batch is acknowledged by the broker, so the source
offsets of the batch may be committed after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

#: ``send(topic, key, value, headers) -> awaitable delivery`` - the shape of
#: Faust's and aiokafka's producers once their scheduling step is awaited.
SendFn = Callable[
    [str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]], Awaitable[Awaitable[Any]]
]


class KafkaSink(Protocol):
    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None: ...

    async def flush(self) -> None: ...


class BufferedKafkaSink:
    def __init__(self, send: SendFn) -> None:
        self._send = send
        self._pending: list[
            tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]
        ] = []

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        self._pending.append((topic, key, value, headers))

    async def flush(self) -> None:
        """Send everything buffered and wait for delivery; on failure keep it all to retry."""
        if not self._pending:
            return
        deliveries = [await self._send(*record) for record in self._pending]
        await asyncio.gather(*deliveries)
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)


class MemoryKafkaSink:
    """In-memory double for unit tests."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.written: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.fail_next = 0

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        self.pending.append((topic, key, value, list(headers)))

    async def flush(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("dead-letter broker unavailable (test double)")
        self.written.extend(self.pending)
        self.pending.clear()
