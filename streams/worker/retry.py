"""Retrying an effect (a Kafka flush, a Redis write) until it is durable, or failing loudly.

Errors are classified at the adapters (:func:`driftline.sinks.exceptions.classify`):

* a **transient** error (the service is down, slow, loading) is retried with
  exponential backoff for as long as it takes: the batch must not be
  acknowledged before its effects are durable, and dropping it would lose
  data.  Each failed attempt is counted (``on_error``) and the effect stays
  in the :class:`EffectTracker`, whose oldest entry's age is exported and
  turns readiness to 503;
* a **permanent** error (a bug, a refused credential, a script error) is not
  retried: :class:`EffectFailed` is raised with the cause, and the worker
  stops loudly instead of spinning on it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from driftline.sinks.exceptions import PermanentError, classify

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


class EffectFailed(PermanentError):
    """An effect failed with an error that retrying cannot fix."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"writing {what} failed permanently: {type(cause).__name__}: {cause}")
        self.what = what
        self.cause = cause


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc``'s operation later can succeed."""
    return classify(exc) == "transient"


class EffectTracker:
    """Effects started and not yet finished, with when each started (monotonic seconds).

    An effect that hangs (a paused Redis, a stalled broker) raises nothing
    for a long time; its age here is what makes it visible.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ids = itertools.count()
        self._started: dict[int, tuple[str, float]] = {}
        #: (target, error) of the latest failed attempt of an unfinished effect
        self.last_error: dict[str, str] = {}
        #: when the last effect finished (monotonic; 0.0 before any)
        self.last_finished = 0.0

    def start(self, target: str) -> int:
        token = next(self._ids)
        self._started[token] = (target, self._clock())
        return token

    def finish(self, token: int) -> None:
        self.last_finished = self._clock()
        target, _ = self._started.pop(token, ("", 0.0))
        if not any(t == target for t, _ in self._started.values()):
            self.last_error.pop(target, None)

    def oldest_age(self, target: str | None = None) -> float:
        """Seconds since the oldest unfinished effect (of ``target``) started; 0 if none."""
        starts = [s for t, s in self._started.values() if target is None or t == target]
        return max(0.0, self._clock() - min(starts)) if starts else 0.0

    def pending(self) -> dict[str, float]:
        """Per target, the age of its oldest unfinished effect."""
        now = self._clock()
        out: dict[str, float] = {}
        for target, started in self._started.values():
            out[target] = max(out.get(target, 0.0), now - started)
        return out


async def until_done(
    effect: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]],
    on_error: Callable[[], None] = lambda: None,
    tracker: EffectTracker | None = None,
    target: str = "effect",
) -> T:
    """Run ``effect`` until it succeeds (returning its result), with ``backoff`` between attempts.

    Transient failures are logged as warnings and retried; a permanent one is
    logged in one line and raised as :class:`EffectFailed` (whoever stops on
    it logs the traceback).
    """
    token = tracker.start(target) if tracker is not None else None
    attempt = 0
    try:
        while True:
            try:
                result = await effect()
            except Exception as exc:
                on_error()
                if not is_transient(exc):
                    log.error(
                        "writing %s failed with a permanent error (not retried): %s: %s",
                        what,
                        type(exc).__name__,
                        exc,
                    )
                    raise EffectFailed(what, exc) from exc
                if tracker is not None:
                    tracker.last_error[target] = f"{type(exc).__name__}: {exc}"[:200]
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
    finally:
        if tracker is not None and token is not None:
            tracker.finish(token)
