"""``driftline serve`` over HTTP: the FastAPI application and its uvicorn process.

**Routes** (and no others; ``GET /openapi.json`` describes them, generated
from the typed models of :mod:`.models`)::

    GET  /v1/features/{group}/{entity}[?features=a,b][&windows=5m,1h][&as_of=ms]   one entity
    POST /v1/features/{group}:batch  {"entities": [...], "features": [...], "windows": [...],
                                      "as_of_ms": ms}
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
401, 404 unknown group or route, 405, 413 too many entities or too large a
body, 503 Redis unreachable, or overloaded (every pooled Redis connection
busy: the request is shed at once rather than queued).

The body of a batch is read as JSON whatever its ``Content-Type`` says
(``curl -d`` sends ``application/x-www-form-urlencoded``).

**Why FastAPI, and what is not left to it.**  Routes, parameters, bodies and
the document come from typed models (pydantic), and answers are validated
against them on the way out.  Three things sit in front of it, in one small
ASGI layer (:class:`_Edge`), because they must hold for requests no route
matches: the bearer check, the body limit, and the request metrics.  The
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
import gc
import logging
import logging.config
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import uvicorn
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from driftline.errors import redact
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.streams.clients import redis_client
from driftline.streams.errors import DriftlineError
from driftline.streams.logs import logging_config
from driftline.streams.security import bearer_matches
from driftline.streams.serve.api import ApiError, FeatureApi
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
from driftline.streams.serve.registry import Catalog, RegistryReader
from driftline.streams.settings import Settings
from driftline.streams.worker.web import bind_socket

log = logging.getLogger(__name__)

#: gc thresholds of the serving process (CPython's default: 700, 10, 10).  A
#: batch read allocates tens of thousands of short-lived objects; with 700 the
#: young generation is collected dozens of times per request.
GC_THRESHOLDS = (20_000, 20, 20)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --------------------------------------------------------------- the edge


def _guarded(path: str) -> bool:
    return path.startswith("/v1/") or path == "/metrics"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _send_error(
    send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = Error(error=message, status=status).model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def route_template(scope: Scope) -> str:
    """The matched route's template (a bounded label value), or ``unmatched``."""
    route = scope.get("route")
    return route.path_format if isinstance(route, APIRoute) else "unmatched"


class _Edge:
    """Before routing: the bearer check and the body limit; around it: the request metrics."""

    def __init__(self, app: ASGIApp, *, api: FeatureApi) -> None:
        self.app = app
        self.token = api.token.encode() if api.token is not None else None
        self.max_body = api.max_body_bytes
        self.metrics = api.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def counted(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            if (
                self.token is not None
                and _guarded(scope["path"])
                and not bearer_matches(_header(scope, b"authorization"), self.token)
            ):
                await _send_error(
                    counted,
                    401,
                    "missing or wrong bearer token",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
            if scope["method"] == "POST":
                body = await self._body(scope, receive)
                if body is None:  # too large (answered) or the client went away
                    await _send_error(
                        counted, 413, f"the body is larger than {self.max_body} bytes"
                    )
                    return
                receive = _replay(body)
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [
                    (b"content-type", b"application/json")
                ]
            await self.app(scope, receive, counted)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not response_started:
                await _send_error(counted, 500, "internal error (logged by the server)")
        finally:
            self.metrics.observe(
                route_template(scope), scope["method"], status, time.perf_counter() - started
            )

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or ``None`` when it is larger than the limit or never comes."""
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


# --------------------------------------------------------------- errors


def _json(document: dict[str, Any]) -> Response:
    """A feature answer, encoded by orjson: see "the answers" in the module docstring."""
    return Response(orjson.dumps(document), media_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _at(loc: Iterable[Any]) -> str:
    """``("body", "entities", 1)`` -> ``entities[1]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(errors: Iterable[Any]) -> str:
    """pydantic's errors of a request as one line a person can act on."""
    expected = ", ".join(BatchRequest.model_fields)
    parts: list[str] = []
    for e in errors:
        where, *path = e["loc"] or ("body",)
        if e["type"] == "json_invalid":
            parts.append(f"the body is not valid JSON: {e.get('ctx', {}).get('error', '')}")
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown key {path[-1]!r} in the body (expected {expected})")
        else:
            message = str(e["msg"]).removeprefix("Value error, ")
            if where == "body" and e["type"] in ("model_attributes_type", "dict_type"):
                message = 'the body must be a JSON object {"entities": [...]}'
            elif path:
                got = f" (got {e['input']!r})" if where in ("query", "path") else ""
                message = f"{_at(path)}: {message}{got}"
            else:
                message = f"the body: {message}"
            parts.append(message)
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, dict(exc.headers or {}))

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error(400, validation_message(exc.errors()))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


# --------------------------------------------------------------- routes


def _responses(*statuses: int, token: bool) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Unknown feature or window name, bad as_of, or a bad body",
        401: "Missing or wrong bearer token",
        404: "Unknown feature group",
        413: "Too many entities or too large a body",
        503: "Redis is unreachable, or the server is overloaded",
    }
    return {
        s: {"model": Error, "description": described[s]}
        for s in (*statuses, *((401,) if token else ()))
    }


def build_app(api: FeatureApi) -> FastAPI:
    """The application: the seven routes of the document, and nothing else."""
    token = api.token.encode() if api.token is not None else None
    bearer = HTTPBearer(
        scheme_name="bearerAuth",
        auto_error=False,
        description="Required on /v1 routes and /metrics when the server has "
        "DRIFTLINE_SERVE__TOKEN set.",
    )

    async def authorized(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> None:
        # the edge has checked already; this keeps the routes closed without it
        header = request.headers.get("authorization")
        raw = header.encode("latin-1") if header is not None else None
        if token is not None and not bearer_matches(raw, token):
            raise ApiError(401, "missing or wrong bearer token")

    secured = [Depends(authorized)] if token is not None else []
    has_token = token is not None
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
    _install_error_handlers(app)
    app.add_middleware(_Edge, api=api)

    @app.get(
        "/v1/features/{group}/{entity:path}",
        operation_id="getFeatures",
        summary="Features of one entity",
        description="An unknown entity is not an error: counts 0, sums 0.0, other aggregates "
        "null, newest_event_ms null.",
        response_model=FeatureVector,
        responses=_responses(400, 404, 503, token=has_token),
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
    ) -> Response:
        return _json(await api.features(group, entity, features, windows, as_of))

    @app.post(
        "/v1/features/{group}:batch",
        operation_id="getFeaturesBatch",
        summary="Features of many entities in one Redis round trip",
        description=f"At most {api.max_batch_entities} entities and {api.max_body_bytes} "
        "bytes per request.",
        response_model=BatchResponse,
        responses=_responses(400, 404, 413, 503, token=has_token),
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
    api = FeatureApi(
        RedisFeatureStore(client, prefix=settings.redis.key_prefix),
        catalog.groups,
        registry=RegistryReader(client, catalog).entries,
        ping=client.ping,
        max_batch_entities=serve.max_batch_entities,
        max_body_bytes=serve.max_body_bytes,
        token=serve.token.get_secret_value() if serve.token is not None else None,
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
        f"{g.name} v{g.version} ({len(g.feature_names())} features)"
        for g in catalog.groups.values()
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
    # The objects of start-up (modules, the app, the catalog) live until exit:
    # move them out of the collector's reach so a full collection during a
    # request scans only what requests allocate (a latency tail, measured by
    # bench/serving.py), and collect the young generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal
    # to the handlers it found: a stop that was asked for is a clean exit (0)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    if not server.started:
        raise DriftlineError("driftline serve did not start (see the log above)")
