"""``driftline worker --processes N``: N worker processes of one consumer group.

A worker uses about one core: its event loop and Faust's consumer thread
share the Python GIL (``bench/features.py``), so one process cannot use a
second core however many partitions it owns.  Under Kubernetes or compose,
run more replicas; on a plain machine this starts N workers with the same
config, each its own member of the consumer group (Kafka spreads the
partitions over them), and supervises them::

    driftline worker -c driftline.yaml --processes 4
        worker 0: metrics on port P,   Faust data dir <data_dir>/process-0
        worker 1: metrics on port P+1, Faust data dir <data_dir>/process-1
        ...

SIGTERM or SIGINT is passed to every worker, which stops gracefully.  If a
worker exits on its own, the others are stopped too and the supervisor exits
with that worker's code: a half-staffed group would hide the failure, and
whatever restarts the supervisor (systemd, a container runtime) restarts
the set.  Each worker dies with the supervisor (``PR_SET_PDEATHSIG``, on
Linux), so none is left behind if the supervisor is killed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from driftline.streams.processes import pdeathsig_preexec
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)

#: How long stopping workers may take before they are killed.
STOP_TIMEOUT_S = 30.0


def worker_env(settings: Settings, index: int, run_dir: Path) -> dict[str, str]:
    """The environment of worker ``index``: its own metrics port and Faust data dir."""
    env = dict(os.environ)
    port = settings.metrics.port
    if port != 0:
        env["DRIFTLINE_METRICS__PORT"] = str(port + index)
    base = settings.worker.data_dir or run_dir
    env["DRIFTLINE_WORKER__DATA_DIR"] = str(Path(base) / f"process-{index}")
    return env


def check_processes(settings: Settings, n: int) -> None:
    """Refuse ``n`` workers that cannot all have a metrics port (``ValueError``)."""
    if settings.metrics.port != 0 and settings.metrics.port + n - 1 > 65535:
        raise ValueError(f"metrics ports {settings.metrics.port}..+{n - 1} exceed 65535")


def run_processes(config: Path, settings: Settings, n: int) -> int:
    """Run ``n`` workers of ``config`` until a signal or until one exits; their exit code."""
    check_processes(settings, n)
    own_dir = settings.worker.data_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix=f"driftline-{settings.app_id}-"))
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "driftline.streams.cli",
                        "worker",
                        "-c",
                        str(config),
                    ],
                    env=worker_env(settings, i, run_dir),
                    stdin=subprocess.DEVNULL,
                    preexec_fn=pdeathsig_preexec(os.getpid(), signal.SIGTERM),
                )
            )
            port = settings.metrics.port
            log.info(
                "worker %d: pid %d%s",
                i,
                procs[-1].pid,
                f", metrics on port {port + i}" if port else "",
            )
        code = _wait(procs, lambda: stopping)
    finally:
        _stop_all(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    return code


def _wait(procs: list[subprocess.Popen[bytes]], stopping: Callable[[], bool]) -> int:
    while not stopping():
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code is not None:
                log.error(
                    "worker %d (pid %d) exited with %d; stopping the others", i, proc.pid, code
                )
                if code < 0:
                    return 128 - code  # killed by a signal: the shell's convention
                return code if code != 0 else 1  # a worker must not stop on its own
        time.sleep(0.2)
    return 0


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop in %.0fs; killing it", proc.pid, STOP_TIMEOUT_S)
            proc.kill()
            proc.wait()
