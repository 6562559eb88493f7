"""What the worker's probes answer, computed from state the worker keeps, never from a call.

A probe must answer within a second whatever Redis and the broker do, so
``/readyz`` and ``/metrics`` read only this object; the slow questions are
asked by a background task with a time limit (:meth:`WorkerHealth.probe_redis`)
and by the work itself:

* the **effect tracker** knows every Redis write and Kafka flush started and
  not yet durable; one pending longer than ``stall_after_s`` means a service
  is hanging or failing (each failed attempt is also counted);
* the **consumer** stamps every successful fetch (an idle topic still gets
  empty fetch answers), so a broker that stops answering shows as a growing
  fetch age;
* a **permanent failure** (:class:`~driftline.streams.worker.retry.EffectFailed`, an error
  escaping a source's pipeline) is recorded before the worker stops.

Readiness is 503 with the reasons in the body while any of these holds, or
while no partition is assigned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from driftline.streams.worker.retry import EffectTracker

log = logging.getLogger(__name__)


class WorkerHealth:
    def __init__(
        self,
        *,
        tracker: EffectTracker | None = None,
        stall_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker if tracker is not None else EffectTracker(clock)
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._since = clock()
        #: monotonic time of the last successful fetch (written by the consumer thread)
        self.last_fetch: float | None = None
        self.redis_error: str | None = None
        self.failure: str | None = None
        self.assigned_partitions = 0

    def fetched(self) -> None:
        """The broker answered a fetch (called from the consumer's thread: one store)."""
        self.last_fetch = self._clock()

    def fetch_age(self) -> float:
        """Seconds since the broker last answered a fetch; 0 while a write is pending.

        While a batch waits for its effects the consumer stops fetching (its
        queue is full): a paused Redis must not read as a silent broker.
        The pending write has its own age (EffectStuck).
        """
        if self.tracker.pending():
            return 0.0
        last = max(
            self.last_fetch if self.last_fetch is not None else self._since,
            self.tracker.last_finished,
        )
        return max(0.0, self._clock() - last)

    def fail(self, reason: str) -> None:
        self.failure = self.failure or reason

    def verdict(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)``; details name every reason for not being ready."""
        reasons: list[str] = []
        if self.failure is not None:
            reasons.append(f"failed: {self.failure}")
        if self.redis_error is not None:
            reasons.append(f"redis: {self.redis_error}")
        pending = self.tracker.pending()
        for target, age in sorted(pending.items()):
            if age >= self.stall_after_s:
                error = self.tracker.last_error.get(target)
                reasons.append(
                    f"{target}: a write has been pending for {age:.0f}s"
                    + (f" (last error: {error})" if error else " (no answer yet)")
                )
        fetch_age = self.fetch_age()
        if self.assigned_partitions and fetch_age >= self.stall_after_s:
            reasons.append(f"kafka: no successful fetch for {fetch_age:.0f}s")
        if not self.assigned_partitions:
            reasons.append("no partitions assigned (yet)")
        details: dict[str, Any] = {
            "redis": self.redis_error is None,
            "assigned_partitions": self.assigned_partitions,
            "fetch_age_s": round(fetch_age, 3),
            "effects_pending_s": {t: round(a, 3) for t, a in sorted(pending.items())},
        }
        if reasons:
            details["reasons"] = reasons
        return not reasons, details

    async def probe_redis(self, ping: Callable[[], Awaitable[Any]], timeout_s: float) -> None:
        """One PING with a time limit; remembers the outcome for the probes."""
        try:
            await asyncio.wait_for(ping(), timeout=timeout_s)
        except TimeoutError:
            self.redis_error = f"no answer to PING within {timeout_s:g}s"
        except Exception as exc:  # refused, auth, loading: all mean not ready
            self.redis_error = f"PING failed: {type(exc).__name__}: {exc}"[:200]
        else:
            self.redis_error = None
