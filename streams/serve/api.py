"""``driftline serve``: online features over HTTP, in a process of its own.

**Why not inside the worker.**  The Faust worker and the serving API have
nothing in common but Redis, and putting them in one process would tie
together things that must move independently:

* *Scaling.*  Serving scales with model traffic (replicas behind a load
  balancer), the worker with event volume and partitions (at most one busy
  worker per partition).  Separate processes scale on separate signals.
* *Rebalances.*  Every worker is a member of the Kafka consumer group.  If
  serving replicas were workers, adding or removing one for traffic would
  rebalance the group and pause consumption for every partition.
* *Latency.*  The worker's event loop spends tens of milliseconds at a time
  validating and aggregating a batch; a request arriving meanwhile would
  wait for it.  Here the event loop does nothing but answer requests.

The process reads Redis only (``RedisFeatureStore.read``: one pipelined
round trip per request, whatever the number of entities) and computes the
features at read time straight from the stored ring blobs
(:func:`features.reader.read_rings`, equal to the engine's ``read_features``),
so it keeps no state and any number of replicas can run.

**Routes** (and no others; ``GET /openapi.json`` describes them)::

    GET  /v1/features/{group}/{entity}[?features=a,b][&windows=5m,1h][&as_of=ms]   one entity
    POST /v1/features/{group}:batch  {"entities": [...], "features": [...], "windows": [...],
                                      "as_of_ms": ms}
    GET  /v1/registry                feature groups, versions, lineage
    GET  /healthz                    the process is up
    GET  /readyz                     Redis answers PING (else 503)
    GET  /openapi.json               OpenAPI 3.1 document

With ``DRIFTLINE_SERVE__TOKEN`` set, every ``/v1`` route needs
``Authorization: Bearer <token>`` (401 otherwise); the probes and the
document never do, since kubelets and API tooling send none.  Errors are JSON
``{"error": message, "status": code}``: 400 bad parameters or body, 401, 404
unknown group or route, 405, 413 too many entities or too large a body,
503 Redis unreachable, or overloaded (every pooled Redis connection busy: the
request is shed at once rather than queued).  An unknown *entity* is not an
error: it has no events, so its counts are 0, sums 0.0, everything else null,
and ``newest_event_ms`` null (a model should get its defaults, not a failure).

**Freshness** per feature, as of ``t`` (:func:`freshness`)::

    windowed (value or distinct over W)
        fresh   the window (t - W, t] holds at least one usable value of the
                feature's source field: the value describes recent events
        empty   it holds none: the value is the empty aggregate (0 / null),
                which is the correct answer, not missing data
    last (not windowed, does not decay)
        fresh   the value's event time is within the group's longest window of t
        stale   it is older than that: every window has decayed past it, the
                value is kept only because the entity's key has not expired
        empty   no value stored

Windowed features are computed at read time, so they are never stale: an
entity without recent events decays to ``empty``.  Reads are exact for
``t >= newest_event_ms`` (the default, ``t`` = now); reading as of a time
before the entity's newest event is approximate (buckets older than the
newest event minus the window were pruned, and ``last`` values are the newest,
not those known at ``t``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import logging.config
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import MultiMapping
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import MaxConnectionsError, RedisError

from driftline.features import serving
from driftline.features.definitions import FeatureGroup
from driftline.features.exceptions import CodecError, FeatureSelectionError
from driftline.features.reader import Reading
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.metrics import ServeMetrics
from driftline.streams.clients import redis_client
from driftline.streams.errors import DriftlineError
from driftline.streams.logs import logging_config
from driftline.streams.security import bearer_matches, redact
from driftline.streams.serve.registry import Catalog, RegistryReader
from driftline.streams.settings import Settings
from driftline.streams.worker.web import bind_socket

log = logging.getLogger(__name__)

#: gc thresholds of the serving process (CPython's default: 700, 10, 10).  A
#: batch read allocates tens of thousands of short-lived objects; with 700 the
#: young generation is collected dozens of times per request.
GC_THRESHOLDS = (20_000, 20, 20)

#: Largest accepted ``as_of``: bucket ids must stay exact as doubles (features.codec).
MAX_AS_OF_MS = 2**53 - 1
_READY_TIMEOUT_S = 2.0


class ApiError(DriftlineError):
    """A request the API refuses: answered as ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------- pure parts


def parse_as_of(text: str | None, now_ms: int) -> int:
    """``as_of`` from a query string: epoch ms, default now; ``ApiError(400)`` otherwise."""
    if text is None:
        return now_ms
    if not text.isascii() or not text.isdigit() or int(text) > MAX_AS_OF_MS:
        raise ApiError(400, f"as_of must be epoch milliseconds (0..{MAX_AS_OF_MS}), got {text!r}")
    return int(text)


def select_features(
    group: FeatureGroup,
    requested: Sequence[str] | None,
    windows: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """:func:`driftline.features.serving.select_features`; a bad selection is a 400."""
    try:
        return serving.select_features(group, requested, windows)
    except FeatureSelectionError as exc:
        raise ApiError(400, str(exc)) from None


class BatchRequest(NamedTuple):
    entities: list[str]
    features: list[str] | None
    windows: list[str] | None
    as_of_ms: int | None


def parse_batch(body: bytes, max_entities: int) -> BatchRequest:
    """Entities, features, windows and as-of time of a batch body, or ``ApiError``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, 'the body must be a JSON object {"entities": [...]}')
    extra = sorted(set(doc) - {"entities", "features", "windows", "as_of_ms"})
    if extra:
        raise ApiError(
            400,
            f"unknown key(s) {', '.join(extra)} (expected entities, features, windows, as_of_ms)",
        )
    entities = doc.get("entities")
    if not isinstance(entities, list) or not entities:
        raise ApiError(400, "entities must be a non-empty list of entity keys")
    if len(entities) > max_entities:
        raise ApiError(
            413, f"at most {max_entities} entities per batch, got {len(entities)}: split the batch"
        )
    keys: list[str] = []
    for i, e in enumerate(entities):
        if isinstance(e, bool) or not isinstance(e, str | int) or e == "":
            raise ApiError(
                400, f"entities[{i}] must be a non-empty string or an integer, got {e!r}"
            )
        keys.append(str(e))
    features = doc.get("features")
    if features is not None and (
        not isinstance(features, list) or not all(isinstance(f, str) for f in features)
    ):
        raise ApiError(400, "features must be a list of feature names")
    windows = doc.get("windows")
    if windows is not None and (
        not isinstance(windows, list) or not all(isinstance(w, str) for w in windows)
    ):
        raise ApiError(400, 'windows must be a list of window names, e.g. ["5m", "1h"]')
    as_of = doc.get("as_of_ms")
    if as_of is not None and (
        isinstance(as_of, bool) or not isinstance(as_of, int) or not 0 <= as_of <= MAX_AS_OF_MS
    ):
        raise ApiError(
            400, f"as_of_ms must be epoch milliseconds (0..{MAX_AS_OF_MS}), got {as_of!r}"
        )
    return BatchRequest(keys, features, windows, as_of)


# --------------------------------------------------------------- the API


class StateReader(Protocol):
    """What the API needs of a store: :meth:`RedisFeatureStore.read`."""

    async def read(
        self, group: FeatureGroup, entities: Sequence[str], as_of_ms: int
    ) -> list[Reading]: ...


Clock = Callable[[], int]


def _now_ms() -> int:
    return int(time.time() * 1000)


class FeatureApi:
    """The request handlers; the store, groups and registry are handed in (tests use doubles)."""

    def __init__(
        self,
        store: StateReader,
        groups: Mapping[str, FeatureGroup],
        *,
        registry: Callable[[], Awaitable[list[dict[str, Any]]]],
        ping: Callable[[], Awaitable[Any]],
        max_batch_entities: int = 1000,
        max_body_bytes: int = 1 << 20,
        token: str | None = None,
        clock: Clock = _now_ms,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else ServeMetrics()
        self.store = store
        self.groups = dict(groups)
        self.registry = registry
        self.ping = ping
        self.max_batch_entities = max_batch_entities
        self.max_body_bytes = max_body_bytes
        self.token = token
        self.clock = clock
        self._warned_at = float("-inf")
        self._failed_reads = 0
        self.document = openapi_document(
            groups,
            max_batch_entities=max_batch_entities,
            max_body_bytes=max_body_bytes,
            token_required=token is not None,
        )

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

    def _group(self, request: web.Request) -> FeatureGroup:
        name = request.match_info["group"]
        group = self.groups.get(name)
        if group is None:
            known = ", ".join(sorted(self.groups)) or "none"
            raise ApiError(404, f"unknown feature group {name!r} (served: {known})")
        return group

    async def _read(
        self, group: FeatureGroup, entities: Sequence[str], names: Sequence[str], as_of: int
    ) -> list[dict[str, Any]]:
        try:
            readings = await self.store.read(group, entities, as_of)
        except MaxConnectionsError as exc:
            # every pooled Redis connection is busy: the process is past its capacity,
            # and shedding the request is better than queueing it for seconds
            self._warn_redis(exc)
            raise ApiError(503, "overloaded: too many reads in flight; retry shortly") from None
        except (RedisError, OSError) as exc:  # OSError covers TimeoutError
            self._warn_redis(exc)
            raise ApiError(503, f"feature store unavailable ({type(exc).__name__})") from None
        except CodecError as exc:
            log.error("undecodable state in group %s v%s: %s", group.name, group.version, exc)
            raise ApiError(500, f"stored state cannot be decoded: {exc}") from None
        return [
            serving.served_row(group, entity, reading, names, as_of)
            for entity, reading in zip(entities, readings, strict=True)
        ]

    async def get_features(self, request: web.Request) -> web.Response:
        group = self._group(request)
        query = request.rel_url.query
        names = select_features(group, _listed(query, "features"), _listed(query, "windows"))
        as_of = parse_as_of(query.get("as_of"), self.clock())
        entity = request.match_info["entity"]
        (result,) = await self._read(group, [entity], names, as_of)
        return _json({"group": group.name, "version": group.version, "as_of_ms": as_of, **result})

    async def get_batch(self, request: web.Request) -> web.Response:
        group = self._group(request)
        batch = parse_batch(await request.read(), self.max_batch_entities)
        names = select_features(group, batch.features, batch.windows)
        at = self.clock() if batch.as_of_ms is None else batch.as_of_ms
        results = await self._read(group, batch.entities, names, at)
        return _json(
            {"group": group.name, "version": group.version, "as_of_ms": at, "results": results}
        )

    async def get_registry(self, request: web.Request) -> web.Response:
        try:
            groups = await self.registry()
        except (RedisError, OSError) as exc:  # OSError covers TimeoutError
            raise ApiError(503, f"feature store unavailable ({type(exc).__name__})") from None
        return _json({"groups": groups})

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self.ping(), timeout=_READY_TIMEOUT_S)
        except (RedisError, OSError) as exc:  # OSError covers TimeoutError
            return _json({"ready": False, "redis": f"{type(exc).__name__}: {exc}"}, status=503)
        return _json({"ready": True, "redis": "ok"})

    async def prometheus(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(self.document)


def _listed(query: MultiMapping[str], name: str) -> list[str] | None:
    """``a,b`` or the parameter repeated (``x=a&x=b``); ``None`` when absent."""
    raw = query.getall(name, None)
    return None if raw is None else [n for part in raw for n in part.split(",") if n]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    response = _json({"error": message, "status": status}, status=status)
    response.headers.update(headers or {})
    return response


def _route_of(request: web.Request) -> str:
    """The matched route's template (a bounded label value), or ``unmatched``."""
    try:
        resource = request.match_info.route.resource
    except AttributeError:
        return "unmatched"
    if resource is None:
        return "unmatched"
    info = resource.get_info()
    template = info.get("formatter") or info.get("path")
    return str(template).replace("{entity:.+}", "{entity}") if template else "unmatched"


def _metrics_middleware(metrics: ServeMetrics) -> Middleware:
    """Counts every answer (errors included) by route template, method and status."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.observe(
                _route_of(request), request.method, status, time.perf_counter() - started
            )

    return middleware


def _middleware(token: str | None) -> Middleware:
    """Bearer check on /v1 and /metrics (before anything else runs), then failures as JSON."""
    expected = token.encode() if token is not None else None

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if (
            expected is not None
            and (request.path.startswith("/v1/") or request.path == "/metrics")
            and not bearer_matches(request.headers.get("Authorization"), expected)
        ):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.message)
        except web.HTTPException as exc:  # aiohttp's own: 404/405 routing, 413 body size
            if exc.status < 400:
                raise
            if exc.status == 404:
                message = f"no route {request.method} {request.path}"
            elif exc.status == 405:
                message = f"method {request.method} is not allowed on {request.path}"
            else:
                message = exc.text if exc.text and exc.text[:4] != f"{exc.status}:" else exc.reason
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            return _error(exc.status, message, allow)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _error(500, "internal error (logged by the server)")

    return middleware


def build_app(api: FeatureApi) -> web.Application:
    """The aiohttp application: the seven routes of the document, no implicit HEAD routes.

    A test compares :func:`served_routes` of this app with the paths of
    :func:`openapi_document`, so a route cannot be added without documenting it.
    """
    app = web.Application(
        middlewares=[_metrics_middleware(api.metrics), _middleware(api.token)],
        client_max_size=api.max_body_bytes,
    )
    router = app.router
    # ``{entity:.+}``: entity keys may contain "/" (sent raw or as %2F)
    router.add_get("/v1/features/{group}/{entity:.+}", api.get_features, allow_head=False)
    router.add_post("/v1/features/{group}:batch", api.get_batch)
    router.add_get("/v1/registry", api.get_registry, allow_head=False)
    router.add_get("/healthz", api.health, allow_head=False)
    router.add_get("/readyz", api.ready, allow_head=False)
    router.add_get("/openapi.json", api.openapi, allow_head=False)
    router.add_get("/metrics", api.prometheus, allow_head=False)
    return app


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """``(method, path template)`` of every route ``app`` answers (for the document check)."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        out.add((route.method, str(path)))
    return out


# --------------------------------------------------------------- OpenAPI


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": dict(schema)}}


def _obj(props: Mapping[str, Any], required: Iterable[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(props),
        "required": list(props if required is None else required),
        "additionalProperties": False,
    }


def openapi_document(
    groups: Mapping[str, FeatureGroup],
    *,
    max_batch_entities: int,
    max_body_bytes: int,
    token_required: bool,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route, written by hand (no generator dependency).

    It reflects this deployment: the served group names are the ``group``
    enum, the batch limit is ``maxItems``, and ``/v1`` operations require the
    bearer scheme only when a token is configured.
    """
    names = sorted(groups)

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": _content(_ref("Error"))}

    secured: list[dict[str, list[str]]] = [{"bearerAuth": []}] if token_required else []
    auth = {"401": error("Missing or wrong bearer token")} if token_required else {}
    unavailable = {"503": error("Redis is unreachable, or the server is overloaded")}
    group_param = {
        "name": "group",
        "in": "path",
        "required": True,
        "description": "Feature group name.",
        "schema": {"type": "string", **({"enum": names} if names else {})},
    }
    nullable_int = {"type": ["integer", "null"]}
    entity_result = {
        "entity": {"type": "string"},
        "newest_event_ms": {
            **nullable_int,
            "description": "Event time of the entity's newest event; null when none is stored.",
        },
        "features": {
            "type": "object",
            "additionalProperties": _ref("FeatureValue"),
            "description": "Requested features by name, in request order (default: all).",
        },
        "freshness": {"type": "object", "additionalProperties": _ref("Freshness")},
    }
    group_fields = {
        "group": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "as_of_ms": {"type": "integer", "minimum": 0},
    }
    schemas: dict[str, Any] = {
        "FeatureValue": {
            "type": ["number", "string", "boolean", "null"],
            "description": "Counts are integers; sums 0.0 and other aggregates null when the "
            "window is empty; last values have the source field's type.",
        },
        "Freshness": {
            "type": "string",
            "enum": ["fresh", "stale", "empty"],
            "description": "Windowed: fresh if the window holds a value of the source field, "
            "else empty. last: empty if none, stale if older than the group's longest "
            "window, else fresh.",
        },
        "EntityFeatures": _obj(entity_result),
        "FeatureVector": _obj({**group_fields, **entity_result}),
        "BatchRequest": {
            "type": "object",
            "properties": {
                "entities": {
                    "type": "array",
                    "items": {"type": ["string", "integer"]},
                    "minItems": 1,
                    "maxItems": max_batch_entities,
                },
                "features": {
                    "type": ["array", "null"],
                    "items": {"type": "string"},
                    "description": "Feature names; omitted or null: all features.",
                },
                "windows": {
                    "type": ["array", "null"],
                    "items": {"type": "string"},
                    "description": "Window names (e.g. 5m): only features over these "
                    "windows; with features, both must hold.",
                },
                "as_of_ms": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "description": "Read as of this epoch ms; default: now.",
                },
            },
            "required": ["entities"],
            "additionalProperties": False,
        },
        "BatchResponse": _obj(
            {**group_fields, "results": {"type": "array", "items": _ref("EntityFeatures")}}
        ),
        "Error": _obj({"error": {"type": "string"}, "status": {"type": "integer"}}),
        "FeatureInfo": _obj(
            {
                "name": {"type": "string"},
                "kind": {"type": "string", "enum": ["value", "distinct", "last"]},
                "value_type": {"type": "string"},
                "aggregation": {"type": "string"},
                "window": {"type": ["string", "null"]},
                "window_ms": nullable_int,
                "source_field": {"type": "string"},
            }
        ),
        "SchemaInfo": _obj(
            {
                "file": {"type": "string"},
                "encoding": {"type": "string"},
                "fingerprint": {"type": ["string", "null"]},
                "schema_ids": {"type": "object", "additionalProperties": {"type": "string"}},
            }
        ),
        "Lineage": _obj(
            {
                "topic": {"type": ["string", "null"]},
                "schema": {"oneOf": [_ref("SchemaInfo"), {"type": "null"}]},
                "fields": {"type": "array", "items": {"type": "string"}},
                "entity_key": {"type": "string"},
                "event_time": {"type": ["string", "null"]},
                "feature_group": _obj(
                    {
                        "name": {"type": "string"},
                        "version": {"type": "integer"},
                        "fingerprint": {"type": "string"},
                    }
                ),
                "redis_key_space": {"type": "string"},
                "path": {"type": "string"},
                "contracts_seen": {
                    "type": "array",
                    "items": _obj(
                        {"fingerprint": {"type": "string"}, "first_seen_ms": {"type": "integer"}}
                    ),
                },
            }
        ),
        "RegistryEntry": _obj(
            {
                "name": {"type": "string"},
                "version": {"type": "integer", "minimum": 1},
                "status": {"type": "string", "enum": ["active", "retired"]},
                "fingerprint": {"type": "string"},
                "description": {"type": "string"},
                "owner": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "source": {"type": "string"},
                "topic": {"type": ["string", "null"]},
                "entity_key": {"type": "string"},
                "first_deployed_ms": nullable_int,
                "last_write_ms": nullable_int,
                "keys_expire_ms": nullable_int,
                "features": {"type": "array", "items": _ref("FeatureInfo")},
                "lineage": _ref("Lineage"),
                "warnings": {"type": "array", "items": {"type": "string"}},
            }
        ),
        "Registry": _obj({"groups": {"type": "array", "items": _ref("RegistryEntry")}}),
        "Health": _obj({"status": {"type": "string", "const": "ok"}}),
        "Ready": _obj({"ready": {"type": "boolean"}, "redis": {"type": "string"}}),
    }
    feature_get = {
        "operationId": "getFeatures",
        "summary": "Features of one entity",
        "description": "An unknown entity is not an error: counts 0, sums 0.0, other "
        "aggregates null, newest_event_ms null.",
        "parameters": [
            group_param,
            {
                "name": "entity",
                "in": "path",
                "required": True,
                "description": "Entity key (may contain '/').",
                "schema": {"type": "string"},
            },
            {
                "name": "features",
                "in": "query",
                "required": False,
                "description": "Comma-separated feature names (or the parameter "
                "repeated); default: all.",
                "schema": {"type": "string"},
            },
            {
                "name": "windows",
                "in": "query",
                "required": False,
                "description": "Comma-separated window names (e.g. 5m,1h): only features "
                "over these windows (no last values); with features, both must hold.",
                "schema": {"type": "string"},
            },
            {
                "name": "as_of",
                "in": "query",
                "required": False,
                "description": "Read as of this epoch ms; default: now. Exact for times at or "
                "after the entity's newest event.",
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_AS_OF_MS},
            },
        ],
        "responses": {
            "200": {"description": "The features", "content": _content(_ref("FeatureVector"))},
            "400": error("Unknown feature name or bad as_of"),
            **auth,
            "404": error("Unknown feature group"),
            **unavailable,
        },
        "security": secured,
    }
    batch = {
        "operationId": "getFeaturesBatch",
        "summary": "Features of many entities in one Redis round trip",
        "parameters": [group_param],
        "requestBody": {
            "required": True,
            "description": f"At most {max_batch_entities} entities and {max_body_bytes} bytes.",
            "content": _content(_ref("BatchRequest")),
        },
        "responses": {
            "200": {
                "description": "One result per requested entity, in request order",
                "content": _content(_ref("BatchResponse")),
            },
            "400": error("Bad JSON, bad entities, unknown feature name or bad as_of_ms"),
            **auth,
            "404": error("Unknown feature group"),
            "413": error("Too many entities or too large a body"),
            **unavailable,
        },
        "security": secured,
    }
    public: list[dict[str, list[str]]] = []
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "driftline feature serving",
            "version": "1.0.0",
            "description": "Online features computed from sliding windows in Redis, and the "
            "feature registry with lineage. Errors are JSON {error, status}.",
        },
        "paths": {
            "/v1/features/{group}/{entity}": {"get": feature_get},
            "/v1/features/{group}:batch": {"post": batch},
            "/v1/registry": {
                "get": {
                    "operationId": "getRegistry",
                    "summary": "Feature groups (active and retired versions) with lineage",
                    "responses": {
                        "200": {
                            "description": "The registry",
                            "content": _content(_ref("Registry")),
                        },
                        **auth,
                        **unavailable,
                    },
                    "security": secured,
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: the process answers",
                    "responses": {
                        "200": {"description": "Up", "content": _content(_ref("Health"))}
                    },
                    "security": public,
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: Redis answers PING",
                    "responses": {
                        "200": {"description": "Ready", "content": _content(_ref("Ready"))},
                        "503": {"description": "Not ready", "content": _content(_ref("Ready"))},
                    },
                    "security": public,
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics: requests by route and status, latency",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **auth,
                    },
                    "security": secured,
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1 document",
                            "content": _content({"type": "object"}),
                        }
                    },
                    "security": public,
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Required on /v1 routes when the server has "
                    "DRIFTLINE_SERVE__TOKEN set.",
                }
            },
        },
    }


# --------------------------------------------------------------- process


def create_app(settings: Settings, catalog: Catalog) -> web.Application:
    """The serving application for ``settings``; its Redis client closes with the app."""
    redis_cfg = settings.redis
    client = redis_client(settings)
    serve = settings.serve
    reader = RegistryReader(client, catalog)
    api = FeatureApi(
        RedisFeatureStore(client, prefix=redis_cfg.key_prefix),
        catalog.groups,
        registry=reader.entries,
        ping=client.ping,
        max_batch_entities=serve.max_batch_entities,
        max_body_bytes=serve.max_body_bytes,
        token=serve.token.get_secret_value() if serve.token is not None else None,
    )
    app = build_app(api)

    async def close(_: web.Application) -> None:
        await client.aclose()

    app.on_cleanup.append(close)
    return app


def run_serve(settings: Settings, catalog: Catalog) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests (up to 5 s) and exit."""
    logging.config.dictConfig(logging_config(settings.worker.log_level, settings.worker.log_format))
    serve = settings.serve
    try:
        sock = bind_socket(serve.host, serve.port)
    except OSError as exc:
        raise DriftlineError(
            f"cannot listen on {serve.host}:{serve.port}: {exc.strerror or exc} "
            "(set serve.port or DRIFTLINE_SERVE__PORT)"
        ) from None
    host, port = sock.getsockname()[:2]
    app = create_app(settings, catalog)
    groups = ", ".join(
        f"{g.name} v{g.version} ({len(g.feature_names())} features)"
        for g in catalog.groups.values()
    )
    log.info(
        "driftline serve on http://%s:%s: groups %s; Redis %s; bearer token %s",
        host,
        port,
        groups or "none",
        redact(settings.redis.url),
        "required on /v1" if serve.token is not None else "not required",
    )
    access = logging.getLogger("aiohttp.access") if settings.worker.log_level == "debug" else None
    # The objects of start-up (modules, the app, the catalog) live until exit:
    # move them out of the collector's reach so a full collection during a
    # request scans only what requests allocate (a latency tail, measured by
    # bench/serving.py), and collect the young generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    web.run_app(app, sock=sock, print=None, access_log=access, shutdown_timeout=5.0)
