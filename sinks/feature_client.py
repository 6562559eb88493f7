"""Online features for model-serving code: :class:`AsyncFeatureClient` and :class:`FeatureClient`.

::

    from driftline import FeatureClient

    with FeatureClient.redis("redis://redis:6379/0", prefix="driftline") as client:
        rows = client.get_online_features(
            ["user-00042", "user-00043"],
            features=["user_spend:amount_mean_5m", "user_spend:amount_count_1h"],
        )
    rows[0].values["user_spend:amount_mean_5m"], rows[0].freshness, rows[0].as_of_ms

Features are named ``group:feature``.  Two backends answer the same:

* **Redis** (``FeatureClient.redis``): reads the online store directly, one
  round trip per group; the group definitions come from the registry the
  workers keep in Redis, so no config file is needed;
* **HTTP** (``FeatureClient.http``): asks ``driftline serve``
  (``POST /v1/features/{group}:batch``), with its bearer token if it needs one.

**Which version** of a group is read: ``versions={"user_spend": 2}`` pins one
(both backends); otherwise the *active* one, as ``driftline serve`` reads it.
Over HTTP the server decides.  Over Redis the client reads the registry
(one ``HGETALL`` per group, at most once a second, so an activation reaches
it within a second): the version its ``active`` field names (``driftline
registry activate``); when none is activated, the lowest of the versions the
workers are writing (written within :data:`LIVE_SLACK_MS` of the most recently
written one: what serve calls the lowest configured version, since the client
has no config), and the highest recorded version when no write was recorded.
Activating a version makes every reader agree at once.

The sync client runs the async one on a private event loop in a thread, so it
can be called from any synchronous code (a Flask view, a batch job).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import orjson

from driftline.features.definitions import FeatureGroup
from driftline.features.exceptions import FeatureSelectionError
from driftline.features.reader import Reading
from driftline.features.registry import DeployedVersion, group_from_definition
from driftline.features.serving import exact_online, select_features, served_row
from driftline.sinks.exceptions import PermanentError, TransientError
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import REDIS_ERRORS, connect_redis
from driftline.sinks.registry_store import ActiveVersions, RedisRegistryStore

T = TypeVar("T")

#: Without an activated version, the versions written within this time of the most
#: recently written one count as being computed by the workers (each worker records
#: a write of each version it computes about once a minute).
LIVE_SLACK_MS = 5 * 60_000


def default_version(versions: Sequence[DeployedVersion]) -> DeployedVersion | None:
    """The version a reader without a config serves (see the module docstring)."""
    usable = [v for v in versions if group_from_definition(v.definition) is not None]
    active = next((v for v in usable if v.active), None)
    if active is not None:
        return active
    written = [v.last_write_ms for v in usable if v.last_write_ms is not None]
    if not written:
        return max(usable, key=lambda v: v.version, default=None)
    newest = max(written)
    live = [
        v
        for v in usable
        if v.last_write_ms is not None and v.last_write_ms >= newest - LIVE_SLACK_MS
    ]
    return min(live, key=lambda v: v.version)


class FeatureClientError(PermanentError):
    """A request the client cannot serve as asked (unknown group or feature, bad name)."""


@dataclass(frozen=True)
class OnlineFeatures:
    """The requested features of one entity, as of one time."""

    entity: str
    #: ``group:feature`` -> value (None: an empty window of a mean/min/max/...)
    values: dict[str, Any]
    as_of_ms: int
    #: ``group:feature`` -> ``fresh`` | ``stale`` | ``empty`` (see driftline.features.serving)
    freshness: dict[str, str] = field(default_factory=dict)
    #: group -> the entity's newest event time in that group (None: never seen)
    newest_event_ms: dict[str, int | None] = field(default_factory=dict)


def parse_refs(features: Sequence[str]) -> dict[str, list[str]]:
    """``["g:f1", "g:f2", "h:f"]`` -> ``{"g": ["f1", "f2"], "h": ["f"]}`` (order kept)."""
    if isinstance(features, str):
        raise FeatureClientError("features must be a list of 'group:feature' names, not a string")
    out: dict[str, list[str]] = {}
    for ref in features:
        group, sep, name = ref.partition(":")
        if not sep or not group or not name:
            raise FeatureClientError(f"{ref!r}: name features as 'group:feature'")
        names = out.setdefault(group, [])
        if name not in names:
            names.append(name)
    if not out:
        raise FeatureClientError("no features requested")
    return out


class _Backend(Protocol):
    """Rows as :func:`driftline.features.serving.served_row` makes them, one per entity."""

    async def read(
        self, group: str, entities: Sequence[str], names: Sequence[str], as_of_ms: int | None
    ) -> tuple[int, list[dict[str, Any]]]:
        """The time read as of (``as_of_ms``, or now when ``None``) and the served rows."""
        ...

    async def aclose(self) -> None: ...


class _OnlineStore(Protocol):
    """The online store as a reader reads it.

    :class:`~driftline.sinks.feature_store.RedisFeatureStore`, or
    :class:`~driftline.sinks.feature_store.MemoryFeatureStore` in tests.
    """

    async def read(
        self, group: FeatureGroup, entities: Sequence[str], as_of_ms: int
    ) -> list[Reading]: ...


class _RegistryStore(Protocol):
    """The registry the workers keep.

    :class:`~driftline.sinks.registry_store.RedisRegistryStore`, or
    :class:`~driftline.sinks.registry_store.MemoryRegistryStore` in tests.
    """

    async def deployed(
        self, names: Iterable[str] = (), *, scan: bool = True
    ) -> tuple[list[DeployedVersion], list[str]]: ...


class _StoreBackend:
    """Reads the online store directly; group definitions come from the registry."""

    def __init__(
        self,
        store: _OnlineStore,
        registry: _RegistryStore,
        *,
        prefix: str,
        versions: Mapping[str, int] | None,
        close: Callable[[], Awaitable[None]],
        active_cache_s: float = 1.0,
    ) -> None:
        self._store = store
        self._registry = registry
        self._prefix = prefix
        self._versions = dict(versions or {})
        #: definitions by (name, version): a version's definition never changes
        self._groups: dict[tuple[str, int], FeatureGroup] = {}
        self._recorded: dict[str, str] = {}
        self._active = ActiveVersions(self._choose, cache_s=active_cache_s)
        self._close = close

    async def _choose(self, name: str) -> int | None:
        """Read the registry of ``name``: the version to serve (``None``: none usable)."""
        versions, _ = await self._registry.deployed([name], scan=False)
        self._recorded[name] = ", ".join(f"v{v.version}" for v in versions) or "none"
        wanted = self._versions.get(name)
        if wanted is not None:
            chosen = next((v for v in versions if v.version == wanted), None)
        else:
            chosen = default_version(versions)
        found = group_from_definition(chosen.definition) if chosen is not None else None
        if found is None:
            return None
        self._groups[(name, found.version)] = found
        return found.version

    async def _group(self, name: str) -> FeatureGroup:
        wanted = self._versions.get(name)
        if wanted is not None and (name, wanted) in self._groups:
            return self._groups[(name, wanted)]  # pinned: the registry is read once
        try:
            version = await self._active.get(name)
        except REDIS_ERRORS as exc:
            raise TransientError(
                f"feature registry unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        if version is None:
            raise FeatureClientError(
                f"feature group {name!r}"
                + (f" version {wanted}" if wanted is not None else "")
                + f" is not in the registry under prefix {self._prefix!r} "
                f"(versions: {self._recorded.get(name, 'none')})"
            )
        return self._groups[(name, version)]

    async def read(
        self, group: str, entities: Sequence[str], names: Sequence[str], as_of_ms: int | None
    ) -> tuple[int, list[dict[str, Any]]]:
        now = int(time.time() * 1000)
        past_read = as_of_ms is not None
        as_of_ms = now if as_of_ms is None else as_of_ms
        definition = await self._group(group)
        try:
            selected = select_features(definition, names)
        except FeatureSelectionError as exc:
            raise FeatureClientError(str(exc)) from None
        try:
            readings = await self._store.read(definition, entities, as_of_ms)
        except REDIS_ERRORS as exc:
            raise TransientError(f"feature store unavailable: {type(exc).__name__}: {exc}") from exc
        for entity, reading in zip(entities, readings, strict=True):
            if past_read and not exact_online(as_of_ms, reading.vector.newest_event_ms, now):
                raise FeatureClientError(
                    f"as_of_ms {as_of_ms} is in the past and before the newest stored event of "
                    f"entity {entity!r} (or it has none): Redis answers exactly only at or after "
                    "an entity's newest event.  Read it through driftline serve "
                    "(FeatureClient.http), which answers from the offline log, or with "
                    "driftline training-set"
                )
        return as_of_ms, [
            served_row(definition, entity, reading, selected, as_of_ms)
            for entity, reading in zip(entities, readings, strict=True)
        ]

    async def aclose(self) -> None:
        await self._close()


class _HttpBackend:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout_s: float,
        versions: Mapping[str, int] | None = None,
    ) -> None:
        import aiohttp

        self._versions = dict(versions or {})
        self._aiohttp = aiohttp
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: Any = None

    async def read(
        self, group: str, entities: Sequence[str], names: Sequence[str], as_of_ms: int | None
    ) -> tuple[int, list[dict[str, Any]]]:
        if self._session is None:
            self._session = self._aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout
            )
        body: dict[str, Any] = {"entities": list(entities), "features": list(names)}
        if as_of_ms is not None:  # else the server's now: not a read in the past
            body["as_of_ms"] = as_of_ms
        if group in self._versions:
            body["version"] = self._versions[group]
        url = f"{self._base}/v1/features/{quote(group, safe='')}:batch"
        try:
            async with self._session.post(url, data=orjson.dumps(body)) as response:
                payload = await response.read()
                status = response.status
        except (OSError, self._aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"{url}: {type(exc).__name__}: {exc}") from exc
        doc = orjson.loads(payload) if payload else {}
        if status != 200:
            message = doc.get("error", payload[:200]) if isinstance(doc, dict) else payload[:200]
            error = TransientError if status in (429, 502, 503, 504) else FeatureClientError
            raise error(f"{url}: HTTP {status}: {message}")
        return int(doc["as_of_ms"]), list(doc["results"])

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AsyncFeatureClient:
    """Reads online features; see the module documentation."""

    def __init__(self, backend: _Backend) -> None:
        self._backend = backend

    @classmethod
    def redis(
        cls,
        url: str,
        *,
        prefix: str = "driftline",
        versions: Mapping[str, int] | None = None,
        username: str | None = None,
        password: str | None = None,
        ssl_cafile: str | None = None,
        socket_timeout_s: float = 5.0,
        cluster: bool = False,
    ) -> AsyncFeatureClient:
        """Read the online store directly (pass the password here or in no URL at all).

        ``versions``: group -> the version to read (default: the active one, see
        the module docstring).

        ``cluster``: ``url`` names a node of a Redis Cluster.  Where an entity's
        key lives follows the shard count the workers recorded in the store.
        """
        client = connect_redis(
            url,
            username=username,
            password=password,
            ssl_cafile=ssl_cafile,
            socket_timeout_s=socket_timeout_s,
            cluster=cluster,
        )
        return cls(
            _StoreBackend(
                RedisFeatureStore(client, prefix=prefix, follow_layout=True),
                RedisRegistryStore(client, prefix=prefix),
                prefix=prefix,
                versions=versions,
                close=client.aclose,
            )
        )

    @classmethod
    def http(
        cls,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 5.0,
        versions: Mapping[str, int] | None = None,
    ) -> AsyncFeatureClient:
        """Ask ``driftline serve`` at ``base_url`` (e.g. ``http://features:8080``).

        ``versions``: group -> the version to read (default: the one the server
        serves, the active one).
        """
        return cls(_HttpBackend(base_url, token, timeout_s, versions))

    async def get_online_features(
        self,
        entities: Sequence[str],
        features: Sequence[str],
        *,
        as_of_ms: int | None = None,
    ) -> list[OnlineFeatures]:
        """The ``group:feature`` values of each entity, in the order of ``entities``.

        Groups are read concurrently, as of ``as_of_ms``, or, without it, as of
        now (each group as of the moment it is read, milliseconds apart; a read
        "now" is never a read in the past).  A read in the past that Redis cannot
        answer exactly (before an entity's newest event, or of an entity without
        a key) is refused over Redis; over HTTP serve answers it from the
        offline log, or refuses it.
        """
        if isinstance(entities, str):
            raise FeatureClientError("entities must be a list of entity keys, not a string")
        keys = [str(e) for e in entities]
        wanted = parse_refs(features)
        answers = await asyncio.gather(
            *(self._backend.read(group, keys, names, as_of_ms) for group, names in wanted.items())
        )
        # read "now" (no as_of_ms), each group as of the time it was read, at most the
        # reads' few milliseconds apart; the rows carry the first
        at = answers[0][0] if answers else int(time.time() * 1000)
        reads = [rows for _, rows in answers]
        values: list[dict[str, Any]] = [{} for _ in keys]
        fresh: list[dict[str, str]] = [{} for _ in keys]
        newest: list[dict[str, int | None]] = [{} for _ in keys]
        for (group, names), rows in zip(wanted.items(), reads, strict=True):
            for i, row in enumerate(rows):
                for name in names:
                    values[i][f"{group}:{name}"] = row["features"][name]
                    fresh[i][f"{group}:{name}"] = row["freshness"][name]
                newest[i][group] = row.get("newest_event_ms")
        order = list(dict.fromkeys(features))  # the caller's order, once each
        return [
            OnlineFeatures(
                entity=entity,
                values={ref: values[i][ref] for ref in order},
                as_of_ms=at,
                freshness={ref: fresh[i][ref] for ref in order},
                newest_event_ms=newest[i],
            )
            for i, entity in enumerate(keys)
        ]

    async def aclose(self) -> None:
        await self._backend.aclose()

    async def __aenter__(self) -> AsyncFeatureClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class FeatureClient:
    """The synchronous :class:`AsyncFeatureClient`: same constructors, same answers."""

    def __init__(self, factory: Callable[[], AsyncFeatureClient]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="driftline-feature-client", daemon=True
        )
        self._thread.start()
        self._client: AsyncFeatureClient = self._run(_build(factory))

    @classmethod
    def redis(cls, url: str, **options: Any) -> FeatureClient:
        """See :meth:`AsyncFeatureClient.redis`."""
        return cls(lambda: AsyncFeatureClient.redis(url, **options))

    @classmethod
    def http(cls, base_url: str, **options: Any) -> FeatureClient:
        """See :meth:`AsyncFeatureClient.http`."""
        return cls(lambda: AsyncFeatureClient.http(base_url, **options))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get_online_features(
        self, entities: Sequence[str], features: Sequence[str], *, as_of_ms: int | None = None
    ) -> list[OnlineFeatures]:
        """See :meth:`AsyncFeatureClient.get_online_features`."""
        return self._run(self._client.get_online_features(entities, features, as_of_ms=as_of_ms))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _build(factory: Callable[[], AsyncFeatureClient]) -> AsyncFeatureClient:
    """Build the async client on the private loop (its connections belong to that loop)."""
    return factory()
