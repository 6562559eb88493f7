"""``driftline serve``: what a request asks and what it gets, without the HTTP framework.

:class:`FeatureApi` answers the serving routes (:mod:`.app` maps them to
HTTP with FastAPI): it picks the group, selects the features, reads the
entities' ring blobs in one pipelined Redis round trip
(``RedisFeatureStore.read``) and computes the features at read time
(:func:`driftline.features.reader.read_rings`, equal to the engine's
``read_features``), so the process keeps no state and any number of
replicas can run.  What it refuses is an :class:`ApiError` with the HTTP
status it means.

**Why a process of its own, not inside the worker.**

* *Scaling.*  Serving scales with model traffic (replicas behind a load
  balancer), the worker with event volume and partitions.
* *Rebalances.*  Every worker is a member of the Kafka consumer group; if
  serving replicas were workers, adding one for traffic would pause
  consumption for every partition.
* *Latency.*  The worker's event loop spends tens of milliseconds at a time
  on a batch; a request arriving meanwhile would wait for it.

**Which version.**  Several versions of a group may be configured (v2 beside
v1 while v2 is backfilled).  A request without ``version`` reads the *active*
one: the version the registry's ``active`` field names (``driftline registry
activate``) when it is configured, else the lowest configured version
(:func:`driftline.features.catalog.served_version`).  The field is read from
Redis at most once a second per group and process
(:class:`~driftline.sinks.registry_store.ActiveVersions`), so an activation
reaches every replica within a second; with one configured version it is not
read at all.  ``version=N`` reads a configured version explicitly; any other
is a 404 naming the configured ones.  Every answer says which version it is.

An unknown *entity* is not an error: it has no events, so its counts are 0,
sums 0.0, everything else null, and ``newest_event_ms`` null (a model should
get its defaults, not a failure).

**Freshness** per feature, as of ``t`` (:func:`driftline.features.serving.freshness`)::

    windowed (value or distinct over W)
        fresh   the window (t - W, t] holds at least one usable value of the
                feature's source field: the value describes recent events
        empty   it holds none: the value is the empty aggregate (0 / null),
                which is the correct answer, not missing data
    last (not windowed, does not decay)
        fresh   the value's event time is within the group's longest window of t
        stale   it is older than that: every window has decayed past it
        empty   no value stored

Reads are exact for ``t >= newest_event_ms`` and for ``t`` not in the past (the
default, ``t`` = now).  Any other read in the past is answered from the offline
log (:mod:`.past`), exactly, or refused with a 409 that says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from redis.exceptions import MaxConnectionsError

from driftline.features import serving
from driftline.features.catalog import served_version
from driftline.features.definitions import FeatureGroup
from driftline.features.exceptions import CodecError, FeatureSelectionError
from driftline.features.reader import Reading
from driftline.sinks.metrics import ServeMetrics
from driftline.sinks.redis_client import REDIS_ERRORS
from driftline.streams.errors import DriftlineError
from driftline.streams.serve.models import BatchRequest
from driftline.streams.serve.past import PastReader, PastReadRefused

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 2.0


class ApiError(DriftlineError):
    """A request the API refuses: answered as ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StateReader(Protocol):
    """What the API needs of a store: :meth:`RedisFeatureStore.read`."""

    async def read(
        self, group: FeatureGroup, entities: Sequence[str], as_of_ms: int
    ) -> list[Reading]: ...


Clock = Callable[[], int]


def _now_ms() -> int:
    return int(time.time() * 1000)


def listed(values: Sequence[str] | None) -> list[str] | None:
    """``a,b`` or the parameter repeated (``x=a&x=b``); ``None`` when absent."""
    return None if values is None else [n for part in values for n in part.split(",") if n]


class FeatureApi:
    """The answers of the routes; store, groups and registry are handed in (tests: doubles)."""

    def __init__(
        self,
        store: StateReader,
        groups: Iterable[FeatureGroup] | Mapping[str, FeatureGroup],
        *,
        registry: Callable[[], Awaitable[list[dict[str, Any]]]],
        ping: Callable[[], Awaitable[Any]],
        active: Callable[[str], Awaitable[int | None]] | None = None,
        max_batch_entities: int = 1000,
        max_body_bytes: int = 1 << 20,
        token: str | None = None,
        clock: Clock = _now_ms,
        metrics: ServeMetrics | None = None,
        past: PastReader | None = None,
    ) -> None:
        """``past``: answers reads in the past the online store cannot answer exactly
        (:mod:`.past`); without it they are refused (409)."""
        self.metrics = metrics if metrics is not None else ServeMetrics()
        self.past = past
        self.store = store
        listed = groups.values() if isinstance(groups, Mapping) else groups
        #: every configured version of each group name, ascending
        self.groups: dict[str, dict[int, FeatureGroup]] = {}
        for group in sorted(listed, key=lambda g: (g.name, g.version)):
            self.groups.setdefault(group.name, {})[group.version] = group
        #: the registry's active field of a group (``ActiveVersions.get``); None: never
        #: read, the lowest configured version is served
        self.active = active
        self.registry = registry
        self.ping = ping
        self.max_batch_entities = max_batch_entities
        self.max_body_bytes = max_body_bytes
        self.token = token
        self.clock = clock
        self._warned_at = float("-inf")
        self._failed_reads = 0

    def _warn_redis(self, exc: Exception) -> None:
        """Log a failed Redis read at most every 10 s: an outage must not flood the log."""
        now = time.monotonic()
        self._failed_reads += 1
        if now - self._warned_at >= 10.0:
            log.warning(
                "Redis read failed (%d failure(s) since the last warning): %s: %s",
                self._failed_reads,
                type(exc).__name__,
                exc,
            )
            self._warned_at = now
            self._failed_reads = 0

    async def group(self, name: str, version: int | None = None) -> FeatureGroup:
        """The configured ``version`` of group ``name``, or the active one (see the module)."""
        versions = self.groups.get(name)
        if versions is None:
            known = ", ".join(sorted(self.groups)) or "none"
            raise ApiError(404, f"unknown feature group {name!r} (served: {known})")
        if version is not None:
            group = versions.get(version)
            if group is None:
                listed = ", ".join(str(v) for v in versions)
                raise ApiError(
                    404,
                    f"feature group {name!r} has no version {version} here (configured: {listed})",
                )
            return group
        if len(versions) == 1 or self.active is None:
            return next(iter(versions.values()))
        try:
            active = await self.active(name)
        except REDIS_ERRORS as exc:  # and no earlier read to fall back to
            self._warn_redis(exc)
            raise ApiError(
                503, f"feature store unavailable ({type(exc).__name__}): active version unknown"
            ) from None
        chosen = served_version(versions, active)
        assert chosen is not None
        return versions[chosen]

    @staticmethod
    def select(
        group: FeatureGroup, requested: Sequence[str] | None, windows: Sequence[str] | None
    ) -> tuple[str, ...]:
        """:func:`driftline.features.serving.select_features`; a bad selection is a 400."""
        try:
            return serving.select_features(group, requested, windows)
        except FeatureSelectionError as exc:
            raise ApiError(400, str(exc)) from None

    async def _read(
        self,
        group: FeatureGroup,
        entities: Sequence[str],
        names: Sequence[str],
        as_of: int,
        now: int,
    ) -> list[dict[str, Any]]:
        """Rows as of ``as_of``; ``now``: the request's time (``as_of`` when none was asked)."""
        try:
            readings = await self.store.read(group, entities, as_of)
        except MaxConnectionsError as exc:
            # every pooled Redis connection is busy: the process is past its capacity,
            # and shedding the request is better than queueing it for seconds
            self._warn_redis(exc)
            raise ApiError(503, "overloaded: too many reads in flight; retry shortly") from None
        except REDIS_ERRORS as exc:  # OSError covers TimeoutError
            self._warn_redis(exc)
            raise ApiError(503, f"feature store unavailable ({type(exc).__name__})") from None
        except CodecError as exc:
            log.error("undecodable state in group %s v%s: %s", group.name, group.version, exc)
            raise ApiError(500, f"stored state cannot be decoded: {exc}") from None
        past = [
            i
            for i, r in enumerate(readings)
            if not serving.exact_online(as_of, r.vector.newest_event_ms, now)
        ]
        if past:
            readings = list(readings)
            answered = await self._read_past(group, entities, past, as_of)
            for i, reading in zip(past, answered, strict=True):
                readings[i] = reading
        return [
            serving.served_row(group, entity, reading, names, as_of)
            for entity, reading in zip(entities, readings, strict=True)
        ]

    async def _read_past(
        self, group: FeatureGroup, entities: Sequence[str], past: list[int], as_of: int
    ) -> list[Reading]:
        """The readings the online store cannot give exactly, from the offline log (or 409)."""
        first = entities[past[0]]
        if self.past is None:
            raise ApiError(
                409,
                f"as_of {as_of} is in the past and before the newest stored event of entity "
                f"{first!r} (or it has none): the online store answers exactly only at or after "
                "an entity's newest event.  Such reads are answered from the offline log when "
                "serve has one (offline.path, written by driftline archive); or read as of a "
                "later time",
            )
        try:
            return await self.past.read(group, [entities[i] for i in past], as_of)
        except PastReadRefused as exc:
            raise ApiError(
                409,
                f"as_of {as_of} is in the past and before the newest stored event of entity "
                f"{first!r} (or it has none), so only the offline log answers it exactly, and "
                f"it cannot now: {exc}",
            ) from None
        except REDIS_ERRORS as exc:
            self._warn_redis(exc)
            raise ApiError(503, f"feature store unavailable ({type(exc).__name__})") from None

    async def features(
        self,
        group_name: str,
        entity: str,
        features: Sequence[str] | None,
        windows: Sequence[str] | None,
        as_of_ms: int | None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """One entity's features (the body of ``GET /v1/features/{group}/{entity}``)."""
        group = await self.group(group_name, version)
        names = self.select(group, listed(features), listed(windows))
        if entity == "":
            raise ApiError(404, "no entity key in the path: /v1/features/{group}/{entity}")
        now = self.clock()
        at = now if as_of_ms is None else as_of_ms
        (result,) = await self._read(group, [entity], names, at, now)
        return {"group": group.name, "version": group.version, "as_of_ms": at, **result}

    async def batch(self, group_name: str, request: BatchRequest) -> dict[str, Any]:
        """Many entities in one round trip (the body of ``POST /v1/features/{group}:batch``)."""
        group = await self.group(group_name, request.version)
        if len(request.entities) > self.max_batch_entities:
            raise ApiError(
                413,
                f"at most {self.max_batch_entities} entities per batch, "
                f"got {len(request.entities)}: split the batch",
            )
        names = self.select(group, request.features, request.windows)
        now = self.clock()
        at = now if request.as_of_ms is None else request.as_of_ms
        results = await self._read(group, request.entities, names, at, now)
        return {"group": group.name, "version": group.version, "as_of_ms": at, "results": results}

    async def registry_entries(self) -> dict[str, Any]:
        try:
            return {"groups": await self.registry()}
        except REDIS_ERRORS as exc:  # OSError covers TimeoutError
            raise ApiError(503, f"feature store unavailable ({type(exc).__name__})") from None

    async def readiness(self) -> tuple[bool, str]:
        """Whether Redis answers PING within 2 s, and what it said."""
        try:
            await asyncio.wait_for(self.ping(), timeout=_READY_TIMEOUT_S)
        except REDIS_ERRORS as exc:  # OSError covers TimeoutError
            return False, f"{type(exc).__name__}: {exc}"
        return True, "ok"
