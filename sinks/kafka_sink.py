"""Buffered Kafka output (dead letters, monitored values, drift alerts).

Buffer with ``add()``, write and wait on ``flush()``: ``flush()`` returns only
once every record of the batch is acknowledged by the broker, so the source
offsets of the batch may be committed after it (the worker's port:
:class:`driftline.streams.worker.ports.KafkaSink`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from driftline.sinks.exceptions import RecordTooLarge, is_too_large

#: ``send(topic, key, value, headers) -> awaitable delivery`` - the shape of
#: Faust's and aiokafka's producers once their scheduling step is awaited.
SendFn = Callable[
    [str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]], Awaitable[Awaitable[Any]]
]
Record = tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]
#: Called on a record the broker refused for its size; returns a smaller one
#: to send instead, or None when it cannot be made smaller.
Shrink = Callable[[Record], Record | None]


class BufferedKafkaSink:
    """Buffers records; :meth:`flush` sends them and waits until the broker has them all.

    A failed flush keeps only the records the broker did not acknowledge, so
    the retry never sends twice what was already written.  A record refused
    for its size (``MessageSizeTooLargeError``, ``RecordTooLargeError``) can
    never be written as it is: it is replaced by ``shrink(record)`` (a dead
    letter cut to its headers) and sent again; when it cannot shrink, the
    flush raises :class:`~driftline.sinks.exceptions.RecordTooLarge`, a permanent error.
    """

    def __init__(
        self,
        send: SendFn,
        *,
        shrink: Shrink | None = None,
        on_shrink: Callable[[], None] = lambda: None,
    ) -> None:
        self._send = send
        self._shrink = shrink
        self._on_shrink = on_shrink
        self._pending: list[Record] = []

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        self._pending.append((topic, key, value, headers))

    async def flush(self) -> None:
        """Send everything buffered and wait for delivery; on failure keep what is not written."""
        while self._pending:
            error = await self._send_pending()
            if error is not None:
                raise error
            # only records shrunk after a size refusal can be left: sent in the next round

    async def _send_pending(self) -> BaseException | None:
        """One round: send, wait, keep the unwritten; returns the first error to retry on."""
        pending = self._pending
        deliveries: list[Awaitable[Any]] = []
        for record in pending:
            try:
                deliveries.append(await self._send(*record))
            except Exception as exc:  # refused before it left (size, closed producer)
                deliveries.append(_failed(exc))
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        keep: list[Record] = []
        first: BaseException | None = None
        too_large: BaseException | None = None
        for record, result in zip(pending, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if not isinstance(result, BaseException):
                continue  # acknowledged: never sent again
            if is_too_large(result):
                smaller = self._shrink(record) if self._shrink is not None else None
                if smaller is None or smaller == record:
                    keep.append(record)
                    too_large = too_large or RecordTooLarge(
                        f"the broker refuses a {len(record[2] or b'')}-byte record for "
                        f"{record[0]} and it cannot be made smaller: {result}"
                    )
                    continue
                self._on_shrink()
                keep.append(smaller)
            else:
                keep.append(record)
                first = first or result
        self._pending = keep
        if too_large is not None:
            raise too_large
        return first

    def __len__(self) -> int:
        return len(self._pending)


async def _failed(exc: BaseException) -> Any:
    raise exc


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
