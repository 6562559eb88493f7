"""Retrying an effect (a Kafka flush, a Redis write) until it is durable."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with a cap, reset by :meth:`reset` after a success."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.current = initial_s

    def next_delay(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self.current = self.initial_s


def is_transient(exc: BaseException) -> bool:
    """Connection trouble: OSError, timeouts, redis/aiokafka connection errors."""
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "ConnectionError",
            "TimeoutError",
            "KafkaError",
            "KafkaConnectionError",
            "BusyLoadingError",
        }
    )


async def until_done(
    effect: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]],
    on_error: Callable[[], None] = lambda: None,
) -> T:
    """Run ``effect`` until it succeeds (returning its result), with ``backoff`` between attempts.

    Connection trouble is logged as a warning; anything else with its
    traceback. Both are retried: the batch must not be acknowledged before
    its effects are durable, and dropping it would lose data.
    """
    attempt = 0
    while True:
        try:
            result = await effect()
        except Exception as exc:
            if not is_transient(exc):
                log.exception("unexpected error writing %s", what)
            on_error()
            log.warning(
                "writing %s failed (attempt %d, retrying in %.1fs): %s: %s",
                what,
                attempt + 1,
                backoff.current,
                type(exc).__name__,
                exc,
            )
        else:
            backoff.reset()
            return result
        attempt += 1
        await sleep(backoff.next_delay())
