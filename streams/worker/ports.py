"""What the worker needs from the outside: one small Protocol per I/O boundary.

The worker's logic (:mod:`~driftline.streams.worker.pipeline`,
:mod:`~driftline.streams.worker.monitors`) depends on these, not on Redis or
Kafka clients.  The adapters in :mod:`driftline.sinks` satisfy them, and so do
their in-memory doubles, which the unit tests use::

    port            adapter (sinks/)                       in-memory double
    FeatureStore    feature_store.RedisFeatureStore        feature_store.MemoryFeatureStore
    KafkaSink       kafka_sink.BufferedKafkaSink           kafka_sink.MemoryKafkaSink
    MonitorStore    monitor_store.RedisMonitorStore        monitor_store.MemoryMonitorStore

Every method may raise a client error; the callers retry it
(:func:`~driftline.streams.worker.retry.until_done`), so a double that fails
its next calls (``fail_next``) tests the retries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from driftline.features.definitions import FeatureGroup
from driftline.features.state import Delta, EntityState
from driftline.sinks.feature_store import PartitionState
from driftline.sinks.monitor_store import MonitorCheckpoint

__all__ = ["FeatureStore", "KafkaSink", "MonitorStore", "RecordBuffer"]


class FeatureStore(Protocol):
    """The online store as the pipeline writes it: exactly once per partition offset."""

    async def partition_state(self, source: str, partition: int) -> PartitionState: ...

    async def apply(
        self,
        source: str,
        partition: int,
        *,
        expected_offset: int,
        new_offset: int,
        watermark_ms: int | None,
        deltas: Sequence[tuple[FeatureGroup, Mapping[str, Delta]]],
        ahead: Mapping[int, int] | None = None,
    ) -> tuple[bool, int]:
        """Apply one partition batch if the stored offset is ``expected_offset``.

        ``(True, new_offset)`` when applied, ``(False, stored offset)`` when
        another writer moved it (nothing applied; on a sharded store, the
        shards whose fences did not move may have applied theirs).  ``ahead``:
        the shards' fences past ``expected_offset`` (:attr:`PartitionState.ahead`).
        """
        ...

    async def read_states(
        self, group: FeatureGroup, entities: Sequence[str]
    ) -> list[EntityState | None]: ...

    async def touch(self, group: FeatureGroup, now_ms: int) -> None: ...

    async def mark_live(
        self, source: str, partition: int, groups: Sequence[FeatureGroup]
    ) -> None: ...


class RecordBuffer(Protocol):
    """Somewhere to ``add`` records for Kafka (written later, by a flush)."""

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None: ...


class KafkaSink(RecordBuffer, Protocol):
    """Buffered output: ``add`` records, ``flush`` returns once the broker has them all."""

    async def flush(self) -> None: ...


class MonitorStore(Protocol):
    """Drift monitors' checkpoints, saved with compare-and-set on ``seq``."""

    @property
    def prefix(self) -> str:
        """The key prefix, for messages that name where a checkpoint lives."""
        ...

    async def load(self, name: str) -> MonitorCheckpoint: ...

    async def save(self, name: str, checkpoint: MonitorCheckpoint) -> bool:
        """Store ``checkpoint`` unless someone saved since it was loaded (then ``False``)."""
        ...
