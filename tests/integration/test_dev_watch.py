"""``driftline dev`` waits for its own worker, and says why the worker died.

The "worker" here is a plain child process and the other instance a local
HTTP server: no broker, no Redis.
"""

from __future__ import annotations

import asyncio
import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline.streams.errors import ConfigError
from driftline.streams.local.dev import DevOptions, DevStack, metrics_port_for


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_instance() -> Iterator[int]:
    """The port of a server that answers /readyz with 200, like another dev's worker."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def stack(other_instance: int) -> Iterator[DevStack]:
    options = DevOptions(None, None, None, None, None, 0.0, 0.0, 0, None)
    stack = DevStack(options)
    stack.metrics_port = other_instance  # as if the other instance had taken it meanwhile
    yield stack
    if stack.worker is not None and stack.worker.poll() is None:
        stack.worker.kill()
        stack.worker.wait()
    shutil.rmtree(stack.run_dir, ignore_errors=True)


def _worker(stack: DevStack, code: str) -> Path:
    log_path = stack.run_dir / "worker.log"
    stack.worker = subprocess.Popen([sys.executable, "-c", code])
    return log_path


def test_a_worker_that_died_is_reported_with_its_log_not_the_other_ones_readiness(
    stack: DevStack, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = _worker(stack, "raise SystemExit(2)")
    lines = [f"line {i}" for i in range(30)] + ["driftline: metrics.port: cannot listen"]
    log_path.write_text("\n".join(lines) + "\n")
    assert stack.worker is not None
    stack.worker.wait()
    code = asyncio.run(
        stack.watch("127.0.0.1:1", "redis://127.0.0.1:1/0", asyncio.Event(), log_path)
    )
    out = capsys.readouterr().out
    assert code == 2
    assert "worker ready" not in out
    assert f"worker exited with code 2 before it was ready; the end of its log ({log_path}):" in out
    assert "  | driftline: metrics.port: cannot listen" in out
    assert "  | line 11\n" in out and "line 10\n" not in out  # the last 20 lines


def test_readiness_counts_only_from_a_listener_of_our_worker(
    stack: DevStack, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = _worker(stack, "import time; time.sleep(120)")

    async def watch_for_a_while() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(2.0, stop.set)
        return await stack.watch("127.0.0.1:1", "redis://127.0.0.1:1/0", stop, log_path)

    assert asyncio.run(watch_for_a_while()) == 0  # stopped while waiting
    assert "worker ready" not in capsys.readouterr().out


def test_an_explicit_metrics_port_that_is_taken_is_refused(other_instance: int) -> None:
    with pytest.raises(ConfigError, match=rf"--metrics-port {other_instance}: .* is in use"):
        metrics_port_for(other_instance)
    port, note = metrics_port_for(0)
    assert port > 0 and note is None
