"""The worker's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

Registered with Faust as the app's web server (``app.web_server``), which
replaces Faust's built-in aiohttp views: no ``/table`` dumps, no routes we do
not serve on purpose.  ``/metrics`` can require a bearer token
(``DRIFTLINE_METRICS__TOKEN``); the probes never do, since kubelets send none.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.security import bearer_matches

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class WebService(Service):
    def __init__(
        self,
        *,
        sock: socket.socket,
        metrics: WorkerMetrics,
        readiness: ReadinessCheck,
        token: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._token is not None and not bearer_matches(
            request.headers.get("Authorization"), self._token.encode()
        ):
            return web.Response(
                status=401,
                text="bearer token required\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        await self.readiness()  # refreshes driftline_worker_ready
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        ready, details = await self.readiness()
        return web.json_response({"ready": ready, **details}, status=200 if ready else 503)
