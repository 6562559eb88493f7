"""``driftline dev``: the whole pipeline on one machine, started and stopped for you.

Starts, in order: a Tansu broker and a Redis (unless external ones are given),
the topics, ``driftline worker`` as a child process, and a demo producer;
prints where to look and a status line every few seconds.  Ctrl-C (or
SIGTERM) stops them in reverse order.  Children are in their own process
group and die with this process even if it is killed (PR_SET_PDEATHSIG).

A second ``driftline dev`` must not mistake the first one's worker for its
own: the metrics port is 9464 only while that is free (else a free one, and
it says so), an explicit ``--metrics-port`` that is taken is refused before
anything starts, and readiness counts only from a listener its own worker
holds.  A worker that dies has the end of its log printed, not only kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click
from aiokafka import AIOKafkaProducer

from driftline.errors import redact
from driftline.sinks.redis_client import connect_redis
from driftline.streams.clients import feature_store
from driftline.streams.errors import ConfigError, DriftlineError
from driftline.streams.local import embedded
from driftline.streams.local.cluster import EmbeddedRedisCluster
from driftline.streams.local.demo import DemoEvents
from driftline.streams.local.ports import find_free_port, owns_listener
from driftline.streams.local.status import scrape, status_line
from driftline.streams.processes import child_preexec
from driftline.streams.settings import Settings, load_settings
from driftline.streams.sockets import bind_socket
from driftline.streams.sources import archived_sources, build_sources
from driftline.streams.topics import ensure_topics, topics_for

DEFAULT_CONFIG = Path(__file__).parents[1] / "defaults" / "dev.yaml"
#: The worker's metrics port unless it is taken or ``--metrics-port`` says otherwise.
DEFAULT_METRICS_PORT = 9464
#: Lines of the worker's log shown when it exits on its own.
LOG_TAIL_LINES = 20
STATUS_EVERY_S = 5.0
#: What the demo producer gets wrong besides invalid records, for the quality
#: checks of the default config: events without ``country``, and retries.
DEMO_MISSING_COUNTRY = 0.01
DEMO_DUPLICATES = 0.005


@dataclass(frozen=True)
class DevOptions:
    config: Path | None
    bootstrap: str | None
    redis_url: str | None
    tansu_bin: str | None
    redis_bin: str | None
    rate: float
    invalid_ratio: float
    #: ``None``: 9464, or a free port when that is taken; ``0``: a free port.
    metrics_port: int | None
    duration: float | None
    drift_after: float = 0.0
    #: run the embedded Redis as a Redis Cluster of 3 primaries (``redis.cluster``)
    redis_cluster: bool = False


def _say(message: str) -> None:
    click.echo(message, err=False)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """Whether the worker could listen on 127.0.0.1:*port* now (it binds the same way)."""
    try:
        bind_socket("127.0.0.1", port).close()
    except OSError:
        return False
    return True


def metrics_port_for(requested: int | None) -> tuple[int, str | None]:
    """The worker's metrics port, and a note when the default had to give way.

    Raises :class:`ConfigError` for an explicit port that is taken: the user
    asked for that one, and another server answering on it would be taken for
    the worker.
    """
    if requested == 0:
        return find_free_port(), None
    if requested is None:
        if _port_free(DEFAULT_METRICS_PORT):
            return DEFAULT_METRICS_PORT, None
        port = find_free_port()
        return port, (
            f"port {DEFAULT_METRICS_PORT} is in use (another driftline dev or worker?); "
            f"the worker's metrics are on {port}"
        )
    if not _port_free(requested):
        raise ConfigError(
            f"--metrics-port {requested}: 127.0.0.1:{requested} is in use (another driftline "
            "dev or worker?); pick another port, or 0 (or leave the option out) for a free one"
        )
    return requested, None


def _terminate(child: subprocess.Popen[bytes] | None, *, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if child is None or child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class DevStack:
    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.metrics_port, self.port_note = metrics_port_for(options.metrics_port)
        self.run_dir = Path(tempfile.mkdtemp(prefix="driftline-dev-"))
        self.broker: embedded.EmbeddedBroker | None = None
        self.redis: embedded.EmbeddedRedis | EmbeddedRedisCluster | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.archiver: subprocess.Popen[bytes] | None = None
        self.config_path = options.config or DEFAULT_CONFIG
        settings = load_settings(self.config_path)
        if options.redis_cluster and not settings.redis.cluster:
            redis = settings.redis.model_copy(update={"cluster": True})
            settings = settings.model_copy(update={"redis": redis})
        self.settings: Settings = settings
        sources = build_sources(self.settings, str(self.config_path))
        self.groups = sources.all_groups()
        self.archived = archived_sources(self.settings, sources)
        #: the offline log: kept after exit.  An embedded broker's topics start
        #: empty every run, so each run gets a log of its own.
        self.offline_path = self.settings.offline.path
        if options.bootstrap is None and "://" not in self.offline_path:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            self.offline_path = str(Path(self.offline_path) / f"dev-{stamp}-{os.getpid()}")

    # -- start / stop ------------------------------------------------------

    def start_services(self) -> tuple[str, str]:
        o = self.options
        bootstrap = o.bootstrap
        if bootstrap is None:
            self.broker = embedded.EmbeddedBroker(binary=o.tansu_bin, log_dir=self.run_dir)
            self.broker.start()
            bootstrap = self.broker.bootstrap
            _say(f"  broker   Tansu (embedded) at {bootstrap}")
        else:
            _say(f"  broker   {bootstrap} (external)")
        redis_url = o.redis_url
        if redis_url is None and self.settings.redis.cluster:
            cluster = EmbeddedRedisCluster(binary=o.redis_bin, log_dir=self.run_dir / "redis")
            self.redis = cluster
            cluster.start()
            redis_url = cluster.url
            _say(
                f"  redis    Redis Cluster of {len(cluster.nodes)} primaries (embedded) at "
                f"{', '.join(cluster.urls)}; {self.settings.redis.store_shards} shards"
            )
        elif redis_url is None:
            server = embedded.EmbeddedRedis(binary=o.redis_bin, log_dir=self.run_dir)
            self.redis = server
            server.start()
            redis_url = server.url
            _say(f"  redis    {Path(server.binary).name} (embedded) at {redis_url}")
        else:
            _say(f"  redis    {redact(redis_url)} (external)")
        return bootstrap, redis_url

    def redis_env(self, redis_url: str) -> str:
        """The variables a command needs to reach this run's Redis, as a shell prefix."""
        cluster = " DRIFTLINE_REDIS__CLUSTER=true" if self.settings.redis.cluster else ""
        return f"DRIFTLINE_REDIS__URL={redact(redis_url)}{cluster}"

    def start_worker(self, bootstrap: str, redis_url: str) -> Path:
        env = dict(os.environ)
        env.update(
            {
                "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "DRIFTLINE_REDIS__URL": redis_url,
                "DRIFTLINE_REDIS__CLUSTER": str(self.settings.redis.cluster).lower(),
                "DRIFTLINE_METRICS__PORT": str(self.metrics_port),
                "DRIFTLINE_METRICS__HOST": "127.0.0.1",
                "DRIFTLINE_WORKER__DATA_DIR": str(self.run_dir / "worker-data"),
            }
        )
        self.worker, log_path = self._spawn("worker", env)
        return log_path

    def _spawn(self, command: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        """``driftline COMMAND -c CONFIG`` as a child in its own session, dying with us;
        its output in ``<run dir>/COMMAND.log``."""
        log_path = self.run_dir / f"{command}.log"
        with log_path.open("wb") as log_file:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "driftline.streams.cli",
                    command,
                    "-c",
                    str(self.config_path),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=child_preexec(os.getpid()),
            )
        return child, log_path

    def start_archive(self, bootstrap: str) -> Path | None:
        """``driftline archive`` as a child: the accepted events into the offline log."""
        if not self.archived:
            return None
        env = dict(os.environ)
        env.update(
            {
                "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "DRIFTLINE_METRICS__PORT": str(find_free_port()),
                "DRIFTLINE_METRICS__HOST": "127.0.0.1",
                "DRIFTLINE_OFFLINE__PATH": self.offline_path,
            }
        )
        self.archiver, log_path = self._spawn("archive", env)
        return log_path

    def training_hint(self) -> str:
        group = next((g for g in self.groups if g.source in self.archived), None)
        feature = f"{group.name}:{group.feature_names()[0]}" if group else "GROUP:FEATURE"
        return (
            f"DRIFTLINE_OFFLINE__PATH={self.offline_path} driftline training-set "
            f"-c {self.config_path} --entities labels.csv --features {feature} --out train.parquet"
        )

    def stop(self) -> None:
        # the archiver first: it commits what waits while the broker still answers
        _terminate(self.archiver, timeout=30)
        _terminate(self.worker, timeout=20)
        for server in (self.redis, self.broker):
            if server is not None:
                server.stop()

    # -- the running part ----------------------------------------------------

    async def produce(self, bootstrap: str, stop: asyncio.Event) -> None:
        o = self.options
        if o.rate <= 0:
            return
        source = self.settings.sources[0]
        demo = DemoEvents(max_event_bytes=source.max_event_bytes)
        demo.missing_country_ratio = DEMO_MISSING_COUNTRY
        kafka_kwargs = dict(self.settings.kafka.aiokafka_kwargs(), bootstrap_servers=bootstrap)
        producer = AIOKafkaProducer(**kafka_kwargs, linger_ms=5, max_request_size=4 << 20)
        await producer.start()
        try:
            events = demo.stream(o.invalid_ratio, DEMO_DUPLICATES)
            interval = 1.0 / o.rate
            started = next_at = time.monotonic()
            while not stop.is_set():
                if (
                    o.drift_after > 0
                    and demo.amount_factor == 1.0
                    and time.monotonic() - started > o.drift_after
                ):
                    demo.amount_factor = 1.8
                    _say(f"[{time.strftime('%H:%M:%S')}] demo: amounts now 80 % higher (a drift)")
                # Send what is due (coarse ticks keep CPU low at high rates).
                now = time.monotonic()
                due = max(1, int((now - next_at) / interval) + 1)
                for _ in range(min(due, 10_000)):
                    key, value = next(events)
                    await producer.send(source.topic, value, key=key)
                next_at += due * interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), timeout=max(0.0, next_at - time.monotonic())
                    )
        finally:
            await producer.stop()

    def _worker_exited(self) -> bool:
        return self.worker is not None and self.worker.poll() is not None

    async def _worker_ready(self, url: str) -> bool:
        """Readiness of *our* worker: a 200 from a listener its process holds.

        Another server on the port (a worker of another ``driftline dev``
        that took it first) answers too; ownership is read from ``/proc``
        and trusted when it cannot be (then only while our worker lives).
        """
        if not await asyncio.to_thread(_ready, url):
            return False
        if self.worker is None:
            return True
        owns = owns_listener(self.worker.pid, self.metrics_port)
        return owns is not False and self.worker.poll() is None

    async def _worker_failed(self, log_path: Path, when: str) -> int:
        """Say that the worker exited, with the end of its log; dev's exit code."""
        assert self.worker is not None
        code = self.worker.returncode
        text = await asyncio.to_thread(log_path.read_text, errors="replace")
        tail = text.rstrip().splitlines()[-LOG_TAIL_LINES:]
        _say(f"worker exited with code {code} {when}; the end of its log ({log_path}):")
        for line in tail or ["(empty)"]:
            _say(f"  | {line}")
        return code if 0 < code < 256 else 1

    async def watch(
        self, bootstrap: str, redis_url: str, stop: asyncio.Event, log_path: Path
    ) -> int:
        base = f"http://127.0.0.1:{self.metrics_port}"
        started = time.monotonic()
        while True:
            if self._worker_exited():
                return await self._worker_failed(log_path, "before it was ready")
            if stop.is_set():
                return 0
            if await self._worker_ready(base + "/readyz"):
                break
            await asyncio.sleep(0.25)
        source = self.settings.sources[0]
        groups = [g for g in self.groups if g.source == source.name]
        _say(f"worker ready after {time.monotonic() - started:.1f}s. Where to look:")
        _say(f"  metrics      {base}/metrics   (health {base}/healthz, readiness {base}/readyz)")
        if groups:
            _say(
                f"  features     {self.redis_env(redis_url)} driftline features get "
                f"-c {self.config_path} --group {groups[0].name} user-00000"
            )
        _say(f"  dead letters topic {source.dlq_topic} (reason in header driftline.errors.reason)")
        if self.settings.monitors:
            names = ", ".join(str(m.get("name")) for m in self.settings.monitors)
            _say(
                f"  drift        monitors {names}; alerts on {self.settings.drift.alerts_topic}"
                + (
                    f"; demo amounts jump by 80 % after {self.options.drift_after:.0f}s"
                    if self.options.drift_after > 0 and self.options.rate > 0
                    else ""
                )
            )
            env = (
                f"DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS={redact(bootstrap)} "
                f"{self.redis_env(redis_url)}"
            )
            _say(f"  incidents    {env} driftline monitors list -c {self.config_path}")
            _say(
                f"               a change that is the new normal: {env} "
                f"driftline monitors accept NAME -c {self.config_path}"
            )
        if self.archiver is not None:
            _say(f"  offline log  {self.offline_path} (Delta Lake; kept after exit)")
            _say(f"  training set {self.training_hint()}")
            _say("               (labels.csv: user_id,timestamp[,label...])")
        _say(f"  worker log   {log_path}")
        _say("Ctrl-C stops everything.")
        client = connect_redis(redis_url, cluster=self.settings.redis.cluster)
        store = feature_store(self.settings, client)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=STATUS_EVERY_S)
                if stop.is_set():
                    break
                if self._worker_exited():
                    return await self._worker_failed(log_path, "while running")
                try:
                    m = await asyncio.to_thread(scrape, base + "/metrics")
                except OSError as exc:
                    _say(f"  (metrics not reachable: {exc})")
                    continue
                vector = None
                if groups:
                    [vector] = await store.get(groups[0], ["user-00000"])
                _say(status_line(m, vector, monitors=bool(self.settings.monitors)))
        finally:
            await client.aclose()
        return 0


async def _main(stack: DevStack, bootstrap: str, redis_url: str, log_path: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if stack.options.duration is not None:
        loop.call_later(stack.options.duration, stop.set)
    producer = asyncio.create_task(stack.produce(bootstrap, stop))
    code = await stack.watch(bootstrap, redis_url, stop, log_path)
    stop.set()
    await producer
    return code


def run_dev(options: DevOptions) -> int:
    t0 = time.monotonic()
    stack = DevStack(options)
    _say(f"driftline dev: config {stack.config_path}, files in {stack.run_dir}")
    if stack.port_note:
        _say(f"  metrics  {stack.port_note}")
    try:
        bootstrap, redis_url = stack.start_services()
        kafka_kwargs = dict(stack.settings.kafka.aiokafka_kwargs(), bootstrap_servers=bootstrap)
        asyncio.run(ensure_topics(kafka_kwargs, topics_for(stack.settings)))
        log_path = stack.start_worker(bootstrap, redis_url)
        stack.start_archive(bootstrap)
        _say(
            f"  worker   pid {stack.worker.pid if stack.worker else '?'}; "
            "waiting for partitions ..."
        )
        code = asyncio.run(_main(stack, bootstrap, redis_url, log_path))
    except KeyboardInterrupt:
        code = 0
    except DriftlineError:
        stack.stop()
        _keep_logs(stack.run_dir)
        raise
    finally:
        _say("stopping: archive, worker, redis, broker ...")
        stack.stop()
    _say(f"stopped everything (ran {time.monotonic() - t0:.0f}s).")
    if stack.archiver is not None:
        _say(f"the offline log stays in {stack.offline_path}; a training set from it:")
        _say(f"  {stack.training_hint()}")
    if code == 0:
        shutil.rmtree(stack.run_dir, ignore_errors=True)  # logs and the worker's data dir
    else:
        _keep_logs(stack.run_dir)
    return code


def _keep_logs(run_dir: Path) -> None:
    _say(f"logs kept for a look in {run_dir} (delete the folder when done)")
