"""``driftline dev``, the README's first command, as a user runs it.

Starts its own embedded broker and Redis (not the session's), the worker and
the demo producer, prints where to look and a status line every few seconds,
and stops everything after ``--duration``.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from driftline.streams.local.dev import DEFAULT_CONFIG, DEFAULT_METRICS_PORT
from driftline.streams.local.ports import find_free_port
from tests.worker_process import ROOT


def test_dev_runs_the_demo_pipeline_and_stops_everything(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.streams.cli",
            "dev",
            "--duration=25",
            "--metrics-port=0",
            "--rate=300",
            "--drift-after=0",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out
    assert "worker ready after" in out and "Where to look" in out
    assert "driftline features get" in out and "transactions.dlq" in out
    status = [line for line in out.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] consumed", line)]
    assert status, out
    last = status[-1]
    consumed = int(re.search(r"consumed (\d+)", last).group(1))  # type: ignore[union-attr]
    assert consumed > 1000, last
    # features are served, the demo's broken records and retries are dead-lettered,
    # and the quality checks see the retries and the events without a country
    assert "amount_count_5m=" in last and "amount_count_5m=0 " not in last, last
    assert "malformed_json=" in last and "duplicate=" in last, last
    assert re.search(r"quality: [1-9]\d* dup, missing country", last), last
    assert "stopped everything" in out
    # the archiver wrote the offline log, which outlives the run: a training set from it
    log_dir = re.search(r"offline log  (\S+)", out).group(1)  # type: ignore[union-attr]
    assert f"DRIFTLINE_OFFLINE__PATH={log_dir} driftline training-set" in out
    labels = tmp_path / "labels.csv"
    labels.write_text(f"user_id,timestamp\nuser-00000,{int(time.time() * 1000)}\nnobody,0\n")
    train = subprocess.run(
        [
            sys.executable, "-m", "driftline.streams.cli", "training-set",
            "--entities", str(labels), "--features", "user_spend:amount_count_5m",
            "--out", str(tmp_path / "train.csv"), "-c", str(DEFAULT_CONFIG),
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DRIFTLINE_OFFLINE__PATH": log_dir},
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    counts = (tmp_path / "train.csv").read_text().splitlines()[1:]
    assert int(counts[0].split(",")[-1]) > 0 and counts[1].endswith(",0"), counts
    # a clean stop leaves no files behind (logs are kept only when something failed)
    run_dir = re.search(r"files in (\S+)", out).group(1)  # type: ignore[union-attr]
    assert not Path(run_dir).exists(), run_dir


def test_dev_on_an_embedded_redis_cluster(tmp_path: Path) -> None:
    """``--redis-cluster``: three primaries, the worker and the printed commands set for it."""
    result = subprocess.run(
        [
            sys.executable, "-m", "driftline.streams.cli", "dev", "--redis-cluster",
            "--duration=25", "--metrics-port=0", "--rate=300", "--drift-after=0",
        ],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out
    assert "Redis Cluster of 3 primaries (embedded)" in out and "64 shards" in out, out
    hint = re.search(r"features     (.*driftline features get .*)", out)
    assert hint is not None and "DRIFTLINE_REDIS__CLUSTER=true" in hint.group(1), out
    status = [line for line in out.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] consumed", line)]
    assert status, out
    # the status line reads user-00000's features from the cluster
    assert "amount_count_5m=" in status[-1] and "amount_count_5m=0 " not in status[-1], status[-1]
    assert "stopped everything" in out


def _dev(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "driftline.streams.cli", "dev", "--rate=0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


class _Answering(http.server.BaseHTTPRequestHandler):
    """What another instance's worker says on its port: ready."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ready")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _other_instance(port: int) -> Iterator[bool]:
    """A server answering 200 on 127.0.0.1:*port*; False when the port was taken already."""
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Answering)
    except OSError:
        yield False  # taken by something else: as good for the test
        return
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield True
    finally:
        server.shutdown()
        server.server_close()


def test_a_taken_metrics_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    port = find_free_port()
    with _other_instance(port):
        proc = _dev(tmp_path, f"--metrics-port={port}")
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert f"--metrics-port {port}: 127.0.0.1:{port} is in use" in out, out
    assert "broker" not in out  # nothing was started


def test_a_second_dev_takes_another_port_and_waits_for_its_own_worker(tmp_path: Path) -> None:
    with _other_instance(DEFAULT_METRICS_PORT):
        proc = _dev(tmp_path)
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True
        )
        reader.start()
        seen: list[str] = []
        deadline = time.monotonic() + 150
        try:
            while not any("worker ready after" in line for line in seen):
                assert proc.poll() is None or not lines.empty(), "".join(seen)
                assert time.monotonic() < deadline, "".join(seen)
                with contextlib.suppress(queue.Empty):
                    seen.append(lines.get(timeout=1))
            seen.append(lines.get(timeout=30))  # the metrics line follows
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
            reader.join(timeout=30)
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    note = re.search(
        r"port 9464 is in use \(another driftline dev or worker\?\); "
        r"the worker's metrics are on (\d+)",
        out,
    )
    assert note, out
    port = int(note.group(1))
    assert port != DEFAULT_METRICS_PORT
    assert f"metrics      http://127.0.0.1:{port}/metrics" in out, out
    assert "Traceback" not in out and proc.returncode == 0, out
