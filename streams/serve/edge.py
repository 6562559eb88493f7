"""The edge of ``driftline serve``: what holds for every request, routed or not.

One small ASGI layer (:class:`Edge`) in front of FastAPI does, before
routing, the bearer check (on the raw header bytes: a token that is not
ASCII is compared byte for byte, and no byte sequence a client sends can
make it fail with a 500) and the body limit (the whole body is read up to
``serve.max_body_bytes``, then handed on as JSON whatever its
``Content-Type`` says, since ``curl -d`` sends form-urlencoded); around it,
the request metrics by route template, method and status.  An unhandled
error becomes a logged 500 with the JSON error body.

:func:`install_error_handlers` gives every refusal the one error shape,
``{"error": message, "status": code}``: the API's own (:class:`ApiError`),
the router's 404 and 405, and pydantic's validation errors as a 400 that
names the field.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from driftline.streams.security import bearer_matches
from driftline.streams.serve.api import ApiError, FeatureApi
from driftline.streams.serve.models import BatchRequest, Error

log = logging.getLogger(__name__)

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


class Edge:
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


def install_error_handlers(app: FastAPI) -> None:
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
