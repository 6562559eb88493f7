"""The schema-registry client never hands its credentials to another server.

Two real local HTTP servers: the registry answers every lookup with a
redirect to a second server, which would serve the schema.  The client must
refuse the redirect instead of repeating the request (and its Basic auth
header) there.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from driftline.schemas.registry import SchemaRegistryClient

AVSC = Path(__file__).resolve().parents[2] / "schemas" / "contracts" / "transactions.avsc"


class _Elsewhere(http.server.BaseHTTPRequestHandler):
    """The redirect target: would serve the schema, and records what it is sent."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        body = orjson.dumps({"schema": AVSC.read_text()})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Redirecting(http.server.BaseHTTPRequestHandler):
    target = ""
    code = 302
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(self.code)
        self.send_header("Location", f"{self.target}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[str]:
    """The URL of a registry that redirects to another server (another port: another origin)."""
    _Elsewhere.seen = []
    _Redirecting.seen = []
    elsewhere = _serve(_Elsewhere)
    _Redirecting.target = f"http://127.0.0.1:{elsewhere.server_address[1]}"
    registry = _serve(_Redirecting)
    yield f"http://127.0.0.1:{registry.server_address[1]}"
    for server in (registry, elsewhere):
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_the_credentials_stay_home(
    servers: str, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    _Redirecting.code = code
    client = SchemaRegistryClient(servers, username="svc", password="s3cret-registry")
    with caplog.at_level(logging.WARNING, logger="driftline.schemas.registry"):
        assert client.fetch(5) is None
    assert _Redirecting.seen and all(a and a.startswith("Basic ") for a in _Redirecting.seen)
    assert _Elsewhere.seen == []  # no request at all, so no Authorization header either
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"HTTP Error {code}" in warning and "redirects are not followed" in warning
    assert "s3cret" not in warning


def test_the_credentials_of_the_registry_url_are_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on: the lookup fails at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = SchemaRegistryClient(f"http://svc:s3cret-registry@127.0.0.1:{port}/base")
    with caplog.at_level(logging.WARNING, logger="driftline.schemas.registry"):
        assert client.fetch(5) is None
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"at http://***@127.0.0.1:{port}/base failed" in warning
    assert "s3cret" not in warning
