"""The worker's HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz``, and accepting drift.

``POST /v1/monitors/{name}/accept[?segment=S]`` accepts a drift monitor's
open incident(s) as the new normal, as ``driftline monitors accept`` does:
the worker sends the acceptance on the values topic, where the monitor's
owner (this worker or another) applies it (202 with the record's offset).
It changes state, so it needs the bearer token and is off (403) without
one.

Registered with Faust as the app's web server (``app.web_server``), which
replaces Faust's built-in aiohttp views: no ``/table`` dumps, no routes we do
not serve on purpose.  ``/metrics`` can require a bearer token
(``DRIFTLINE_METRICS__TOKEN``); the probes never do, since kubelets send none.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.security import bearer_matches

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
#: ``(monitor, segment or None, who) -> values-topic offset`` of the acceptance sent
AcceptSender = Callable[[str, str | None, str], Awaitable[int]]


class WebService(Service):
    def __init__(
        self,
        *,
        sock: socket.socket,
        metrics: WorkerMetrics,
        readiness: ReadinessCheck,
        token: str | None = None,
        monitors: Collection[str] = (),
        accept: AcceptSender | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.monitors = frozenset(monitors)
        self.accept = accept
        self.sock = sock
        self.host, self.bound_port = sock.getsockname()[:2]
        self.metrics = metrics
        self.readiness = readiness
        self._token = token
        self._runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/readyz", self._ready)
        app.router.add_post("/v1/monitors/{name}/accept", self._accept)
        return app

    async def on_start(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        site = web.SockSite(self._runner, self.sock)
        await site.start()
        log.info("serving /metrics /healthz /readyz on http://%s:%s", self.host, self.bound_port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def get_web_url(self) -> str:
        return f"http://{self.host}:{self.bound_port}/"

    def _refused(self, request: web.Request) -> web.Response | None:
        if self._token is not None and not bearer_matches(
            request.headers.get("Authorization"), self._token.encode()
        ):
            return web.Response(
                status=401,
                text="bearer token required\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    async def _metrics(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        await self.readiness()  # refreshes driftline_worker_ready
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _accept(self, request: web.Request) -> web.Response:
        if self._token is None:
            return _error(403, "accepting drift over HTTP needs DRIFTLINE_METRICS__TOKEN set")
        refused = self._refused(request)
        if refused is not None:
            return refused
        name = request.match_info["name"]
        if name not in self.monitors or self.accept is None:
            known = ", ".join(sorted(self.monitors)) or "none"
            return _error(404, f"no monitor named {name!r} (monitors: {known})")
        segment = request.query.get("segment")
        who = f"http:{request.remote or '-'}"
        try:
            offset = await self.accept(name, segment or None, who)
        except Exception as exc:  # the broker: the caller may try again
            log.warning("acceptance of monitor %s not sent: %s: %s", name, type(exc).__name__, exc)
            return _error(503, f"the acceptance could not be sent ({type(exc).__name__}); retry")
        log.warning("acceptance of monitor %s (segment %s) sent by %s", name, segment, who)
        return web.json_response(
            {"monitor": name, "segment": segment, "values_topic_offset": offset, "sent": True},
            status=202,
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        ready, details = await self.readiness()
        return web.json_response({"ready": ready, **details}, status=200 if ready else 503)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)
