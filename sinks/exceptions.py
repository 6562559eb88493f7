"""Errors of the adapters, classified once, here, where the client libraries are known.

A retry loop must never spin on a bug, and must never give up on a broker
that is merely restarting.  So every exception that escapes a Redis or Kafka
call is put in one of two classes before anyone decides what to do with it:

* **transient**: the service is unreachable, slow, loading, failing over, or
  momentarily out of memory.  Retried with backoff, for as long as it takes;
  visible meanwhile (``driftline_effect_errors_total``, the age of the oldest
  unfinished effect, readiness 503).
* **permanent**: retrying cannot help (a programming error, a refused
  credential, a record the broker will never take, a Lua script error).  Not
  retried: the worker fails loudly (an ERROR line, a metric, readiness 503)
  and stops, so its supervisor restarts it and nothing is acknowledged that
  was not done.

:func:`classify` is the only place that knows the exception classes of
redis-py and aiokafka; it looks at the exception and at its explicit causes
(Faust wraps aiokafka's errors in its own ``ProducerSendError ... from exc``).
"""

from __future__ import annotations

from typing import Literal

from aiokafka import errors as kafka_errors
from redis import exceptions as redis_errors

from driftline.errors import DriftlineError

Kind = Literal["transient", "permanent"]


class SinkError(DriftlineError):
    """Root of the adapters' errors."""


class TransientError(SinkError):
    """A service is unavailable for now; retrying later may succeed."""


class PermanentError(SinkError):
    """Retrying cannot succeed; the caller must fail loudly."""


class RecordTooLarge(PermanentError):
    """The broker will never accept this record as it is (over the size limits)."""


_REDIS_TRANSIENT: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError
    redis_errors.TimeoutError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,  # a replica after a failover, until clients re-resolve
    redis_errors.ClusterDownError,
    redis_errors.MasterDownError,
    redis_errors.OutOfMemoryError,
    redis_errors.NoScriptError,  # a restarted Redis forgot its scripts: loaded again
    # a cluster client redirected over and over (a resharding or failover under way:
    # "TTL exhausted"), slots being failed over, or every node down; a MOVED that
    # reaches the caller comes from a plain client at a cluster node: permanent
    redis_errors.ClusterError,
    *(
        getattr(redis_errors, name)
        for name in ("SlotNotCoveredError", "RedisClusterUnreachableError")
        if hasattr(redis_errors, name)  # (not in every redis-py this project allows)
    ),
)
#: Error codes of replies that a later attempt may not get (redis-py maps
#: OOM to OutOfMemoryError with the code stripped from the message; the others
#: stay plain ResponseErrors with the code as the message's first word).
_REDIS_TRANSIENT_CODES = frozenset(
    {"OOM", "BUSY", "MISCONF", "NOREPLICAS", "NOSCRIPT", "TRYAGAIN", "CLUSTERDOWN"}
)
_REDIS_PERMANENT: tuple[type[BaseException], ...] = (
    redis_errors.AuthenticationError,  # a subclass of ConnectionError: checked first
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,
)
#: aiokafka errors whose ``retriable`` flag is False but which a broker
#: restart or stall does raise (a send that timed out in the accumulator).
_KAFKA_TRANSIENT: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.ProducerClosed,
    kafka_errors.NoBrokersAvailable,
)
_KAFKA_TOO_LARGE: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(out) < 8:
        out.append(current)
        seen.add(id(current))
        # only explicit wrapping (raise ... from exc): an error raised while
        # handling another (a bug in an except block) is judged on its own
        current = current.__cause__
    return out


def is_too_large(exc: BaseException) -> bool:
    """The broker refused a record for its size (client-side or broker-side check)."""
    return any(isinstance(e, (RecordTooLarge, *_KAFKA_TOO_LARGE)) for e in _chain(exc))


def classify(exc: BaseException) -> Kind:
    """Whether retrying ``exc``'s operation later can succeed."""
    for e in _chain(exc):
        if isinstance(e, TransientError):
            return "transient"
        if isinstance(e, PermanentError):
            return "permanent"
        if isinstance(e, _REDIS_PERMANENT):
            return "permanent"
        if isinstance(e, _REDIS_TRANSIENT):
            return "transient"
        if isinstance(e, redis_errors.ResponseError):
            # OOM clears when keys expire or maxmemory is raised, BUSY when a
            # slow script ends, MISCONF when the disk recovers; anything else a
            # server answers (a script error, WRONGTYPE) will repeat.
            code = getattr(e, "status_code", None) or str(e).split(" ", 1)[0]
            return "transient" if code in _REDIS_TRANSIENT_CODES else "permanent"
        if isinstance(e, _KAFKA_TOO_LARGE):
            return "permanent"
        if isinstance(e, _KAFKA_TRANSIENT):
            return "transient"
        if isinstance(e, kafka_errors.KafkaError):
            return "transient" if type(e).retriable else "permanent"
        if isinstance(e, TimeoutError | ConnectionError):
            return "transient"
        if isinstance(e, OSError) and e.errno is not None:
            return "transient"  # ECONNREFUSED, EHOSTUNREACH, EPIPE ... from a socket
    return "permanent"
