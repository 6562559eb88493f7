"""One server child process: spawn it, wait until it answers, stop it.

:class:`ServerProcess` is the lifecycle shared by the embedded broker and
Redis (:mod:`driftline.streams.local.embedded`); a subclass says how to build
the command line and how to prove readiness.  The child is bound to 127.0.0.1
on a free port (a new one is tried when another process takes it first), logs
to a file whose tail goes into every error, and is tied to the life of this
process (:mod:`driftline.streams.processes`): the kernel kills it when this
process dies, and an ``atexit`` hook stops whatever is still running at a
normal interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self

from driftline.streams.local.errors import EmbeddedError
from driftline.streams.local.ports import find_free_port, owns_listener, tcp_accepts
from driftline.streams.local.probes import NotReady
from driftline.streams.processes import SPAWNER, child_preexec, signal_tree

__all__ = ["ServerProcess"]

log = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3
_LOG_TAIL_BYTES = 4000


def _spawn(
    argv: Sequence[str], log_file: IO[bytes], cwd: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start *argv* detached from the terminal and bound to our lifetime."""
    preexec = child_preexec(os.getpid())

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            close_fds=True,
            start_new_session=True,
            preexec_fn=preexec,
        )

    try:
        return SPAWNER.run(popen)
    except OSError as exc:
        raise EmbeddedError(f"cannot execute {argv[0]!r}: {exc}") from exc


class ServerProcess:
    """Shared lifecycle of one server child process: spawn, wait ready, stop.

    Subclasses say how to build the command line and how to prove readiness.
    """

    #: Short name used in log file names and messages.
    name = "server"

    def __init__(
        self, binary: str, port: int | None, log_dir: str | os.PathLike[str] | None
    ) -> None:
        self._binary = binary
        self._auto_port = port is None
        self._port = port if port is not None else find_free_port()
        self._owns_log_dir = log_dir is None
        self._log_dir_arg = Path(log_dir) if log_dir is not None else None
        self._log_dir: Path | None = None
        self._log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # -- subclass hooks

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _probe(self, timeout: float) -> None:
        """Raise NotReady unless the server answers its protocol."""
        raise NotImplementedError

    # -- public surface

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1 (may change during start() if it was taken)."""
        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the running server, ``None`` when not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self.pid is not None

    @property
    def binary(self) -> str:
        """The executable this server runs."""
        return self._binary

    @property
    def log_path(self) -> Path | None:
        """File receiving the server's stdout and stderr."""
        return self._log_path

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last *max_bytes* of the server's log, for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        with self._log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", "replace")

    def start(self, timeout: float = 20.0) -> Self:
        """Spawn the server and return once it answers its protocol.

        Raises EmbeddedError (with the log tail) if the process exits or does not
        answer within *timeout* seconds.  When the port was picked automatically
        and someone else took it meanwhile, a new port is tried.
        """
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self
            self._discard_dead_process()
            deadline = time.monotonic() + timeout
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self._launch()
                try:
                    self._wait_ready(deadline, timeout)
                except _PortTaken:
                    self._discard_dead_process()
                    if attempt == _PORT_ATTEMPTS:
                        raise EmbeddedError(
                            f"{self.name}: no free port after {attempt} attempts"
                        ) from None
                    self._port = find_free_port()
                    log.info("%s: port taken, retrying on %d", self.name, self._port)
                    continue
                except BaseException:
                    self.stop()
                    raise
                atexit.register(self.stop)
                log.info(
                    "%s ready on 127.0.0.1:%d (pid %d)",
                    self.name,
                    self._port,
                    self._proc.pid if self._proc else -1,
                )
                return self
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to *timeout*, then SIGKILL.  Safe to call repeatedly."""
        with self._lock:
            atexit.unregister(self.stop)
            proc = self._proc
            if proc is not None:
                signal_tree(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s (pid %d) ignored SIGTERM for %.0fs; killing",
                        self.name,
                        proc.pid,
                        timeout,
                    )
                    signal_tree(proc, signal.SIGKILL)
                    proc.wait()
                self._proc = None
            self._cleanup_log_dir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals

    def _ensure_log_dir(self) -> Path:
        if self._log_dir is None:
            if self._log_dir_arg is not None:
                self._log_dir_arg.mkdir(parents=True, exist_ok=True)
                self._log_dir = self._log_dir_arg
            else:
                self._log_dir = Path(tempfile.mkdtemp(prefix=f"driftline-{self.name}-"))
        return self._log_dir

    def _cleanup_log_dir(self) -> None:
        """Remove the log directory only if we created it (a temp dir)."""
        if self._owns_log_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None
            self._log_path = None

    def _launch(self) -> None:
        log_dir = self._ensure_log_dir()
        self._log_path = log_dir / f"{self.name}-{self._port}.log"
        argv = self._argv()
        log.debug("starting %s: %s (log %s)", self.name, argv, self._log_path)
        with self._log_path.open("ab") as log_file:
            self._proc = _spawn(argv, log_file, log_dir, self._env())

    def _discard_dead_process(self) -> None:
        proc = self._proc
        if proc is not None:
            signal_tree(proc, signal.SIGKILL)
            proc.wait()
            self._proc = None

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        last = "not probed yet"
        while True:
            if proc.poll() is not None:
                self._raise_exited(proc)
            if tcp_accepts(self._port) and owns_listener(proc.pid, self._port) is not False:
                try:
                    self._probe(max(0.5, min(2.0, deadline - time.monotonic())))
                except NotReady as exc:
                    last = str(exc)
                else:
                    if proc.poll() is None:  # the answer came from our process
                        return
                    self._raise_exited(proc)
            if time.monotonic() >= deadline:
                raise EmbeddedError(
                    f"{self.name} did not become ready on 127.0.0.1:{self._port} within "
                    f"{timeout:.0f}s (last probe: {last}). Log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _raise_exited(self, proc: subprocess.Popen[bytes]) -> NoReturn:
        tail = self.log_tail()
        if self._auto_port and "in use" in tail.lower():
            raise _PortTaken
        raise EmbeddedError(
            f"{self.name} ({self._binary}) exited with code {proc.returncode} during "
            f"start-up on 127.0.0.1:{self._port}. Log tail:\n{tail}"
        )


class _PortTaken(Exception):
    """The auto-picked port was taken before the server could bind it."""
