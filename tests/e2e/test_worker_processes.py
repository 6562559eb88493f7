"""``driftline worker --processes 2``: two members of one group, supervised, stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_worker_e2e import e2e_config, json_source_only, produce, read_features
from tests.worker_process import ROOT

pytestmark = pytest.mark.slow


def two_free_ports() -> int:
    """A port P such that P and P+1 are free on loopback."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no two consecutive free ports")


def scrape(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


def setup(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> tuple[str, dict[str, Any], int, Path]:
    """(suffix, config, first metrics port, config file) of a two-process worker."""
    suffix = uuid.uuid4().hex[:8]
    config = json_source_only(e2e_config(kafka_bootstrap, redis_url, suffix))
    port = two_free_ports()
    config["metrics"] = {"host": "127.0.0.1", "port": port}
    path = tmp_path / "driftline.yaml"
    path.write_text(yaml.safe_dump(config))
    return suffix, config, port, path


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_processes_share_the_partitions_and_stop_together(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix, config, port, path = setup(tmp_path, kafka_bootstrap, redis_url)
    log_path = tmp_path / "supervisor.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftline.streams.cli",
                "worker",
                "-c",
                str(path),
                "--processes",
                "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=dict(os.environ),
        )
    try:
        deadline = time.monotonic() + 60
        while (
            scrape(port, "driftline_worker_ready") != 1
            or scrape(port + 1, "driftline_worker_ready") != 1
        ):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.3)
        workers = children_of(proc.pid)
        assert len(workers) == 2, workers

        now = int(time.time() * 1000)
        records = [
            (
                f"u{i % 20}".encode(),
                orjson.dumps(
                    {
                        "event_id": f"p-{i}",
                        "user_id": f"u{i % 20}",
                        "amount": 1.0,
                        "category": "fuel",
                        "event_time": now - 1000 + i,
                    }
                ),
            )
            for i in range(400)
        ]
        asyncio.run(produce(kafka_bootstrap, f"tx-{suffix}", records))
        deadline = time.monotonic() + 60
        while True:
            counts = [scrape(p, "driftline_events_valid_total") or 0 for p in (port, port + 1)]
            if sum(counts) >= 400:
                break
            assert time.monotonic() < deadline, (counts, log_path.read_text()[-4000:])
            time.sleep(0.3)
        assert sum(counts) == 400 and min(counts) > 0, counts  # both took partitions
        users = [f"u{i}" for i in range(20)]
        vectors = asyncio.run(read_features(redis_url, f"e2e-{suffix}", config, "spend", users))
        assert [v.values["amount_count_24h"] for v in vectors] == [20] * 20

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-4000:]
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            ), f"worker {pid} left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_that_dies_stops_the_set(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    _, _, port, path = setup(tmp_path, kafka_bootstrap, redis_url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "driftline.streams.cli",
            "worker",
            "-c",
            str(path),
            "--processes",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while len(children_of(proc.pid)) < 2 or scrape(port + 1, "driftline_worker_up") != 1:
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.3)
        first, second = children_of(proc.pid)
        os.kill(second, signal.SIGKILL)  # one worker crashes
        code = proc.wait(timeout=60)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert code == 128 + signal.SIGKILL, out  # its code, not a silent half-staffed group
        assert "exited with -9; stopping the others" in out
        assert (
            not Path(f"/proc/{first}").exists()
            or "zombie" in Path(f"/proc/{first}/status").read_text().lower()
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
