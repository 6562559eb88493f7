"""Run ``driftline worker`` as a user does: a subprocess with a config file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from driftline.streams.local.ports import find_free_port

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "schemas" / "contracts"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.streams.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


class WorkerProcess:
    """``driftline COMMAND -c FILE`` as a subprocess (``worker`` here), ready once
    ``ready_path`` on its metrics port answers 200."""

    command = "worker"
    ready_path = "/readyz"

    def __init__(
        self, tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None
    ) -> None:
        self.port = find_free_port()
        config = {
            **config,
            "metrics": {**config.get("metrics", {}), "host": "127.0.0.1", "port": self.port},
        }
        self.config_path = tmp_path / f"driftline-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / f"{self.command}-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60) -> WorkerProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "driftline.streams.cli",
                    self.command,
                    "-c",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.command} exited with {self.proc.returncode}:\n{self.log()}"
                )
            if self.get(self.ready_path)[0] == 200:
                return self
            time.sleep(0.2)
        raise AssertionError(f"{self.command} not ready after {ready_timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        token = self.env.get("DRIFTLINE_METRICS__TOKEN")
        auth = {"Authorization": f"Bearer {token}"} if token else None
        # a busy machine can keep the answer longer than one request's timeout:
        # try again until a generous deadline rather than fail on the first
        deadline = time.monotonic() + 60
        status, text = self.get("/metrics", auth)
        while status == 0 and time.monotonic() < deadline:
            assert self.proc is None or self.proc.poll() is None, f"worker died:\n{self.log()}"
            time.sleep(0.5)
            status, text = self.get("/metrics", auth)
        assert status == 200, f"/metrics answered {status}: {text[:500]}\n{self.log()}"
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(
            v
            for (n, ls), v in self.metrics().items()
            if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
        )

    def wait_for(self, name: str, at_least: float, timeout: float = 60, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"worker died:\n{self.log()}"
            value = self.metric_sum(name, **labels)
            if value >= at_least:
                return value
            time.sleep(0.2)
        raise AssertionError(
            f"{name}{labels} = {value} < {at_least} after {timeout}s:\n{self.log()}"
        )

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"worker ignored SIGTERM for {timeout}s:\n{self.log()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
