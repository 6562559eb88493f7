"""``driftline serve`` over HTTP: the FastAPI application and its uvicorn process.

**Routes** (and no others; ``GET /openapi.json`` describes them, generated
from the typed models of :mod:`.models`)::

    GET  /v1/features/{group}/{entity}[?features=a,b][&windows=5m,1h][&as_of=ms][&version=N]
                                     one entity
    POST /v1/features/{group}:batch  {"entities": [...], "features": [...], "windows": [...],
                                      "as_of_ms": ms, "version": N}
    GET  /v1/registry                feature groups, versions, lineage
    GET  /healthz                    the process is up
    GET  /readyz                     Redis answers PING (else 503)
    GET  /metrics                    Prometheus: requests by route template and status, latency
    GET  /openapi.json               OpenAPI 3.1 document

With ``DRIFTLINE_SERVE__TOKEN`` set, every ``/v1`` route and ``/metrics``
need ``Authorization: Bearer <token>`` (401 otherwise, checked before
routing, so unknown ``/v1`` paths cannot be enumerated); the probes and the
document never do, since kubelets and API tooling send none.  Errors are
JSON ``{"error": message, "status": code}``: 400 bad parameters or body,
401, 404 unknown group, version or route, 405, 413 too many entities or too large a
body, 503 Redis unreachable, or overloaded (every pooled Redis connection
busy: the request is shed at once rather than queued).

The body of a batch is read as JSON whatever its ``Content-Type`` says
(``curl -d`` sends ``application/x-www-form-urlencoded``).

**Why FastAPI, and what is not left to it.**  Routes, parameters, bodies and
the document come from typed models (pydantic), and answers are validated
against them on the way out.  Three things sit in front of it, in one small
ASGI layer (:class:`.edge.Edge`), because they must hold for requests no
route matches: the bearer check, the body limit, and the request metrics.  The
generated document is adjusted in one place (:func:`_document`): FastAPI
documents a 422 for validation errors, which this API answers as 400.

**The answers.**  The registry and the probes are validated against their
models on the way out.  The feature answers are not: they are built by
:func:`driftline.features.serving.served_row` for every reader alike and
encoded by orjson, because pydantic's validation and encoding of a batch of
100 entities with 34 features costs 1.6 ms against orjson's 0.2 ms (measured
in-process), a tenth of the batch's 20 ms budget.  The end-to-end tests check
every kind of answer against the served document instead
(``tests/e2e/test_serve.py``).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes'
# annotations at run time, and they name types local to build_app.
import logging
import logging.config
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import uvicorn
from fastapi import Depends, FastAPI, Path, Query, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from driftline.errors import redact
from driftline.features.catalog import Catalog
from driftline.sinks.registry_store import ActiveVersions, RedisRegistryStore
from driftline.streams.clients import feature_store, redis_client
from driftline.streams.errors import DriftlineError
from driftline.streams.logs import logging_config
from driftline.streams.processes import freeze_startup
from driftline.streams.serve.api import FeatureApi
from driftline.streams.serve.edge import Edge, install_error_handlers
from driftline.streams.serve.models import (
    MAX_AS_OF_MS,
    BatchRequest,
    BatchResponse,
    Error,
    FeatureVector,
    Health,
    Ready,
    Registry,
)
from driftline.streams.serve.past import past_reader
from driftline.streams.serve.registry import RegistryReader
from driftline.streams.settings import Settings
from driftline.streams.sockets import bind_socket

log = logging.getLogger(__name__)

#: gc thresholds of the serving process (CPython's default: 700, 10, 10).  A
#: batch read allocates tens of thousands of short-lived objects; with 700 the
#: young generation is collected dozens of times per request.
GC_THRESHOLDS = (20_000, 20, 20)


def _json(document: dict[str, Any]) -> Response:
    """A feature answer, encoded by orjson: see "the answers" in the module docstring."""
    return Response(orjson.dumps(document), media_type="application/json")


# --------------------------------------------------------------- routes


def _responses(*statuses: int, token: bool) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Unknown feature or window name, bad as_of, or a bad body",
        409: "as_of is in the past and before an entity's newest stored event (or the entity "
        "has no key), and the offline log cannot answer it exactly now (none, or behind "
        "the worker)",
        401: "Missing or wrong bearer token",
        404: "Unknown feature group, or a version of it that is not configured",
        413: "Too many entities or too large a body",
        503: "Redis is unreachable, or the server is overloaded",
    }
    return {
        s: {"model": Error, "description": described[s]}
        for s in (*statuses, *((401,) if token else ()))
    }


def build_app(api: FeatureApi) -> FastAPI:
    """The application: the seven routes of the document, and nothing else."""
    # The edge (.edge.Edge) checks the token on every /v1 path, routed or not; the
    # scheme here only documents it on the operations that need it.
    bearer = HTTPBearer(
        scheme_name="bearerAuth",
        auto_error=False,
        description="Required on /v1 routes and /metrics when the server has "
        "DRIFTLINE_SERVE__TOKEN set.",
    )
    secured = [Depends(bearer)] if api.token is not None else []
    has_token = api.token is not None
    groups = ", ".join(sorted(api.groups)) or "none"
    GroupName = Annotated[str, Path(description=f"Feature group name (served: {groups}).")]
    Names = Annotated[
        list[str] | None,
        Query(description="Comma-separated names (or the parameter repeated); default: all."),
    ]

    app = FastAPI(
        title="driftline feature serving",
        version="1.0.0",
        description="Online features computed from sliding windows in Redis, and the feature "
        "registry with lineage. Errors are JSON {error, status}.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(Edge, api=api)

    @app.get(
        "/v1/features/{group}/{entity:path}",
        operation_id="getFeatures",
        summary="Features of one entity",
        description="An unknown entity is not an error: counts 0, sums 0.0, other aggregates "
        "null, newest_event_ms null.",
        response_model=FeatureVector,
        responses=_responses(400, 404, 409, 503, token=has_token),
        dependencies=secured,
    )
    async def get_features(
        group: GroupName,
        entity: Annotated[str, Path(description="Entity key (may contain '/').")],
        features: Names = None,
        windows: Annotated[
            list[str] | None,
            Query(
                description="Comma-separated window names (e.g. 5m,1h): only features over "
                "these windows (no last values); with features, both must hold."
            ),
        ] = None,
        as_of: Annotated[
            int | None,
            Query(
                ge=0,
                le=MAX_AS_OF_MS,
                description="Read as of this epoch ms; default: now. Exact for times at or "
                "after the entity's newest event.",
            ),
        ] = None,
        version: Annotated[
            int | None,
            Query(
                ge=1,
                description="Read this configured version of the group; default: the active "
                "one (driftline registry activate; else the lowest configured version).",
            ),
        ] = None,
    ) -> Response:
        return _json(await api.features(group, entity, features, windows, as_of, version))

    @app.post(
        "/v1/features/{group}:batch",
        operation_id="getFeaturesBatch",
        summary="Features of many entities in one Redis round trip",
        description=f"At most {api.max_batch_entities} entities and {api.max_body_bytes} "
        "bytes per request.",
        response_model=BatchResponse,
        responses=_responses(400, 404, 409, 413, 503, token=has_token),
        dependencies=secured,
    )
    async def get_batch(group: GroupName, body: BatchRequest) -> Response:
        return _json(await api.batch(group, body))

    @app.get(
        "/v1/registry",
        operation_id="getRegistry",
        summary="Feature groups (active and retired versions) with lineage",
        response_model=Registry,
        responses=_responses(503, token=has_token),
        dependencies=secured,
    )
    async def get_registry() -> dict[str, Any]:
        return await api.registry_entries()

    @app.get("/healthz", operation_id="health", summary="Liveness: the process answers")
    async def health() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        operation_id="ready",
        summary="Readiness: Redis answers PING",
        responses={503: {"model": Ready, "description": "Not ready"}},
    )
    async def ready(response: Response) -> Ready:
        ok, redis = await api.readiness()
        response.status_code = 200 if ok else 503
        return Ready(ready=ok, redis=redis)

    @app.get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics: requests by route and status, latency",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_responses(token=has_token),
        },
        dependencies=secured,
    )
    async def metrics() -> Response:
        return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", operation_id="openapi", summary="This document")
    async def openapi() -> dict[str, Any]:
        return _document(app)

    return app


def _document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, once, without the 422 answers this API never gives (it says 400)."""
    if app.openapi_schema is None:
        document = app.openapi()
        for operations in document["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """``(method, path template)`` of every route ``app`` answers (for the document check)."""
    return {
        (method, route.path_format)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


# --------------------------------------------------------------- process


def create_app(settings: Settings, catalog: Catalog) -> FastAPI:
    """The serving application for ``settings``; its Redis client closes with the app."""
    client = redis_client(settings)
    serve = settings.serve
    records = RedisRegistryStore(client, prefix=catalog.prefix)
    store = feature_store(settings, client)
    api = FeatureApi(
        store,
        catalog.groups,
        registry=RegistryReader(records, catalog).entries,
        ping=client.ping,
        active=ActiveVersions(records.active).get,
        max_batch_entities=serve.max_batch_entities,
        max_body_bytes=serve.max_body_bytes,
        token=serve.token.get_secret_value() if serve.token is not None else None,
        past=past_reader(settings, store),
    )
    app = build_app(api)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app.router.lifespan_context = lifespan
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
        f"{g.name} v{g.version} ({len(g.feature_names())} features)" for g in catalog.groups
    )
    log.info(
        "driftline serve on http://%s:%s: groups %s; Redis %s; bearer token %s",
        host,
        port,
        groups or "none",
        redact(settings.redis.url),
        "required on /v1 and /metrics" if serve.token is not None else "not required",
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="auto",  # uvloop when installed
            http="auto",  # httptools when installed
            log_config=None,  # ours, configured above
            access_log=settings.worker.log_level == "debug",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
    )
    # A full collection during a request scans only what requests allocate (a
    # latency tail, measured by bench/serving.py).
    freeze_startup(GC_THRESHOLDS)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal
    # to the handlers it found: a stop that was asked for is a clean exit (0)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    if not server.started:
        raise DriftlineError("driftline serve did not start (see the log above)")
