"""``driftline dev``, the README's first command, as a user runs it.

Starts its own embedded broker and Redis (not the session's), the worker and
the demo producer, prints where to look and a status line every few seconds,
and stops everything after ``--duration``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.worker_process import ROOT


def test_dev_runs_the_demo_pipeline_and_stops_everything(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
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
    # a clean stop leaves no files behind (logs are kept only when something failed)
    run_dir = re.search(r"files in (\S+)", out).group(1)  # type: ignore[union-attr]
    assert not Path(run_dir).exists(), run_dir
