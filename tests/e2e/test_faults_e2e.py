"""The fault suite: poison records, a paused Redis, a paused broker, kill -9, through `driftline worker`.

Each test runs the worker as a user does (a subprocess with a config file)
against real servers; servers that a test pauses (SIGSTOP) are its own, so
the session's broker and Redis stay untouched.  Assertions are exact counts
and features; every wait is on a condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftline.schemas.deadletter import parse_dead_letter_headers
from driftline.streams.local.embedded import EmbeddedBroker, EmbeddedRedis
from driftline.streams.local.ports import find_free_port
from driftline.streams.local.probes import wait_for_kafka
from tests.e2e.test_worker_e2e import (
    consume_all,
    e2e_config,
    json_source_only,
    produce,
    read_features,
)
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.slow

#: The worker's request limit in these tests: the 300 KB poison's dead letter must be cut.
MAX_REQUEST = 200_000
USERS = 10


def good_events(prefix: str, n: int, start_ms: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        user = f"{prefix}-{i % USERS}"
        event = {
            "event_id": f"{prefix}-{i}",
            "user_id": user,
            "amount": float(i),
            "category": "fuel",
            "event_time": start_ms + i,
        }
        out.append((user.encode(), orjson.dumps(event)))
    return out


def poison(prefix: str) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected reason, key, value) of records meant to break a worker."""
    user = f"{prefix}-0".encode()
    return [
        ("too_deep", user, b'{"a":' * 1_100 + b"1" + b"}" * 1_100),
        ("oversize", user, b'{"pad": "' + b"p" * 300_000 + b'"}'),
        ("invalid_utf8", user, bytes(range(256)) * 4),
        ("malformed_json", user, b""),
        ("malformed_json", user, None),  # a tombstone
        ("malformed_json", None, b" "),
        ("non_finite_number", user, b'{"user_id": "x", "amount": 1e400}'),
        ("non_finite_number", user, b'{"user_id": "x", "amount": NaN}'),
        ("invalid_utf8", user, b'{"user_id": "\\ud800"}'),
        ("not_an_object", user, b"[1, 2]"),
        ("not_an_object", user, b"[" * 1_000 + b"]" * 1_000),
        (
            "wrong_type",
            user,
            b'{"event_id": "e", "user_id": "u", "amount": "alice@example.com", "category": "fuel", "event_time": 1}',
        ),
    ]


def fault_config(bootstrap: str, redis_url: str, suffix: str) -> dict[str, Any]:
    config = json_source_only(e2e_config(bootstrap, redis_url, suffix))
    config["sources"][0]["max_event_bytes"] = 65_536
    config["kafka"]["max_request_size"] = MAX_REQUEST
    config["worker"].update(retry_backoff_max_s=0.5, stall_after_s=3)
    config["redis"]["socket_timeout_s"] = 1
    return config


def interleave(
    good: list[tuple[bytes, bytes]], bad: list[tuple[str, bytes | None, bytes | None]]
) -> list[tuple[bytes | None, bytes | None]]:
    out: list[tuple[bytes | None, bytes | None]] = []
    every = max(1, len(good) // (len(bad) + 1))
    bad_iter = iter(bad)
    for i, record in enumerate(good):
        out.append(record)
        if i % every == every - 1:
            item = next(bad_iter, None)
            if item is not None:
                out.append((item[1], item[2]))
    out += [(key, value) for _, key, value in bad_iter]
    return out


def probe(worker: WorkerProcess, path: str, timeout: float = 10) -> tuple[int, str, float]:
    """GET with a generous limit (the probe's own limit is the product's, not the test's)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(worker.base + path, timeout=timeout) as response:
            return response.status, response.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), time.monotonic() - started


def wait_until(check: Any, what: str, timeout: float = 90, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not true after {timeout}s (last: {last!r})")


async def expected_counts(
    redis_url: str, prefix: str, config: dict[str, Any], users: list[str], n_per_user: int
) -> None:
    vectors = await read_features(redis_url, prefix, config, "spend", users)
    for user, vector in zip(users, vectors, strict=True):
        assert vector.values["amount_count_24h"] == n_per_user, (user, vector.values)


def test_poison_between_good_events_every_good_counted_once_every_poison_dead_lettered_once(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = fault_config(kafka_bootstrap, redis_url, suffix)
    topic = f"tx-{suffix}"
    worker = WorkerProcess(tmp_path, config).start()
    bad = poison(suffix)
    good = good_events(suffix, 400, int(time.time() * 1000))
    try:
        coords = asyncio.run(produce(kafka_bootstrap, topic, interleave(good, bad)))
        worker.wait_for("driftline_events_valid_total", len(good), source="tx", timeout=90)
        worker.wait_for("driftline_dead_letter_writes_total", len(bad), source="tx", timeout=90)
        dead = asyncio.run(consume_all(kafka_bootstrap, f"{topic}.dlq", len(bad), timeout=60))
        assert probe(worker, "/readyz")[0] == 200
        assert worker.metric_sum("driftline_events_valid_total", source="tx") == len(good)
        assert worker.metric_sum("driftline_events_replayed_total", source="tx") == 0
        assert worker.metric_sum("driftline_dead_letters_truncated_total", source="tx") == 1
        log = worker.log()
    finally:
        code = worker.stop()
    assert code == 0, worker.log()
    by_coords = Counter(
        (int(meta["partition"]), int(meta["offset"]))
        for meta in (parse_dead_letter_headers(m.headers) for m in dead)
    )
    assert all(n == 1 for n in by_coords.values()), by_coords  # exactly once
    assert len(by_coords) == len(bad)
    reasons = Counter(parse_dead_letter_headers(m.headers)["reason"] for m in dead)
    assert reasons == Counter(reason for reason, _, _ in bad)
    assert set(by_coords) <= set(coords)
    for message in dead:
        meta = parse_dead_letter_headers(message.headers)
        assert len(message.value or b"") <= MAX_REQUEST
        if meta["reason"] == "oversize":
            assert meta["truncated"] == "value"
            assert int(meta["original.value.size"]) == 300_011
            assert message.value.startswith(b'{"pad": "ppp')
        else:
            assert "truncated" not in meta
    assert "alice@example.com" not in log  # rejected values stay out of the log
    users = [f"{suffix}-{k}" for k in range(USERS)]
    asyncio.run(expected_counts(redis_url, f"e2e-{suffix}", config, users, len(good) // USERS))


def test_redis_paused_probes_answer_503_with_the_reason_and_nothing_is_lost(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    server = EmbeddedRedis(find_free_port(), log_dir=tmp_path).start()
    suffix = uuid.uuid4().hex[:8]
    config = fault_config(kafka_bootstrap, server.url, suffix)
    topic = f"tx-{suffix}"
    worker = WorkerProcess(tmp_path, config).start()
    start_ms = int(time.time() * 1000)
    before, during = good_events(suffix, 200, start_ms), good_events(suffix, 400, start_ms)[200:]
    pid = server.pid
    assert pid is not None
    paused = False
    try:
        asyncio.run(produce(kafka_bootstrap, topic, before))
        worker.wait_for("driftline_events_valid_total", len(before), source="tx")
        os.kill(pid, signal.SIGSTOP)
        paused = True
        asyncio.run(produce(kafka_bootstrap, topic, during))
        timings: list[float] = []

        def not_ready_because_of_redis() -> bool:
            status, body, elapsed = probe(worker, "/readyz")
            timings.append(elapsed)
            return status == 503 and "redis" in body

        wait_until(not_ready_because_of_redis, "readiness 503 naming redis")
        status, body, elapsed = probe(worker, "/metrics")
        timings.append(elapsed)
        assert status == 200 and "driftline_effect_pending_age_seconds" in body
        wait_until(
            lambda: (
                worker.metric_sum("driftline_effect_errors_total", source="tx", target="redis") >= 1
            ),
            "a failed Redis attempt counted",
        )
        wait_until(
            lambda: worker.metric_sum("driftline_effect_pending_age_seconds", target="redis") >= 3,
            "the pending write's age exported",
        )
        assert worker.metric_sum("driftline_events_valid_total", source="tx") == len(before)
        print(f"probe answers during the Redis pause: max {max(timings):.3f}s over {len(timings)}")
        os.kill(pid, signal.SIGCONT)
        paused = False
        worker.wait_for("driftline_events_valid_total", 400, source="tx", timeout=90)
        wait_until(lambda: probe(worker, "/readyz")[0] == 200, "ready again")
        assert worker.metric_sum("driftline_events_valid_total", source="tx") == 400
        assert worker.metric_sum("driftline_events_replayed_total", source="tx") == 0
        users = [f"{suffix}-{k}" for k in range(USERS)]
        asyncio.run(expected_counts(server.url, f"e2e-{suffix}", config, users, 400 // USERS))
    finally:
        if paused:
            os.kill(pid, signal.SIGCONT)
        code = worker.stop()
        server.stop()
    assert code == 0, worker.log()


def test_broker_paused_readiness_names_the_broker_and_nothing_is_lost(
    tmp_path: Path, redis_url: str
) -> None:
    broker = EmbeddedBroker(find_free_port(), log_dir=tmp_path).start()
    bootstrap = broker.bootstrap
    wait_for_kafka(bootstrap, 30)
    suffix = uuid.uuid4().hex[:8]
    config = fault_config(bootstrap, redis_url, suffix)
    topic = f"tx-{suffix}"
    worker = WorkerProcess(tmp_path, config).start()
    start_ms = int(time.time() * 1000)
    events = good_events(suffix, 400, start_ms)
    pid = broker.pid
    assert pid is not None
    paused = False
    try:
        asyncio.run(produce(bootstrap, topic, events[:200]))
        worker.wait_for("driftline_events_valid_total", 200, source="tx")
        os.kill(pid, signal.SIGSTOP)
        paused = True

        def not_ready_because_of_kafka() -> bool:
            status, body, _ = probe(worker, "/readyz")
            return status == 503 and "kafka: no successful fetch" in body

        wait_until(not_ready_because_of_kafka, "readiness 503 naming the broker")
        assert worker.metric_sum("driftline_fetch_age_seconds") >= 3
        os.kill(pid, signal.SIGCONT)
        paused = False
        asyncio.run(produce(bootstrap, topic, events[200:]))
        worker.wait_for("driftline_events_valid_total", 400, source="tx", timeout=120)
        wait_until(lambda: probe(worker, "/readyz")[0] == 200, "ready again", timeout=120)
        users = [f"{suffix}-{k}" for k in range(USERS)]
        asyncio.run(expected_counts(redis_url, f"e2e-{suffix}", config, users, 400 // USERS))
    finally:
        if paused:
            os.kill(pid, signal.SIGCONT)
        code = worker.stop()
        broker.stop()
    assert code == 0, worker.log()


def test_kill_9_amid_poison_features_exact_every_poison_dead_lettered(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    """After kill -9 a dead letter may be written again (at least once: its
    coordinates identify it); features stay exact and no poison is missed."""
    suffix = uuid.uuid4().hex[:8]
    config = fault_config(kafka_bootstrap, redis_url, suffix)
    topic = f"tx-{suffix}"
    bad = poison(suffix)
    good = good_events(suffix, 2_000, int(time.time() * 1000))
    records = interleave(good, bad)
    half = len(records) // 2
    worker = WorkerProcess(tmp_path, config).start()
    try:
        asyncio.run(produce(kafka_bootstrap, topic, records[:half]))
        worker.wait_for("driftline_events_consumed_total", 1, source="tx")
        worker.kill()
        worker = WorkerProcess(tmp_path, config).start()
        asyncio.run(produce(kafka_bootstrap, topic, records[half:]))
        users = [f"{suffix}-{k}" for k in range(USERS)]

        def applied() -> bool:
            vectors = asyncio.run(read_features(redis_url, f"e2e-{suffix}", config, "spend", users))
            return sum(v.values.get("amount_count_24h") or 0 for v in vectors) == len(good)

        wait_until(applied, "all good events applied", timeout=120)
        dead = asyncio.run(consume_all(kafka_bootstrap, f"{topic}.dlq", len(bad), timeout=60))
    finally:
        code = worker.stop()
    assert code == 0, worker.log()
    asyncio.run(expected_counts(redis_url, f"e2e-{suffix}", config, users, len(good) // USERS))
    coords = {
        (int(meta["partition"]), int(meta["offset"]))
        for meta in (parse_dead_letter_headers(m.headers) for m in dead)
    }
    assert len(coords) == len(bad)  # every poison, at least once


def test_a_permanent_redis_error_fails_the_worker_loudly(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A refused command (an ACL without scripts) is not retried for ever: the
    worker says why, exports it, and exits non-zero; nothing is acknowledged."""
    import redis

    server = EmbeddedRedis(find_free_port(), log_dir=tmp_path).start()
    admin = redis.Redis.from_url(server.url)
    admin.execute_command(
        "ACL",
        "SETUSER",
        "noscripts",
        "on",
        ">s3cret-pw",
        "~*",
        "&*",
        "+@all",
        "-eval",
        "-evalsha",
        "-eval_ro",
        "-evalsha_ro",
        "-script",
        "-fcall",
    )
    admin.close()
    suffix = uuid.uuid4().hex[:8]
    config = fault_config(kafka_bootstrap, server.url, suffix)
    config["redis"]["username"] = "noscripts"
    worker = WorkerProcess(tmp_path, config, env={"DRIFTLINE_REDIS__PASSWORD": "s3cret-pw"})
    try:
        try:
            worker.start()
            asyncio.run(produce(kafka_bootstrap, f"tx-{suffix}", good_events(suffix, 20, 0)))
        except AssertionError:
            pass  # it may fail before it is ready: it writes live marks when assigned partitions
        assert worker.proc is not None
        code = worker.proc.wait(timeout=120)
    finally:
        worker.kill()
        server.stop()
    log = worker.log_path.read_text(errors="replace")
    print(log[-3000:])
    assert code != 0, log
    assert "failed with a permanent error" in log and "NoPermissionError" in log, log
    assert log.count("retrying in") == 0, log  # never retried
    assert "s3cret-pw" not in log


def test_offsets_from_another_broker_stop_the_start_with_how_to_reset(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A Redis used with another broker: its offsets lie past the new partitions' ends."""
    from tests.worker_process import run_cli

    server = EmbeddedRedis(find_free_port(), log_dir=tmp_path).start()
    other = EmbeddedBroker(find_free_port(), log_dir=tmp_path).start()
    wait_for_kafka(other.bootstrap, 30)
    suffix = uuid.uuid4().hex[:8]
    config = fault_config(kafka_bootstrap, server.url, suffix)
    topic = f"tx-{suffix}"
    try:
        worker = WorkerProcess(tmp_path, config).start()
        asyncio.run(produce(kafka_bootstrap, topic, good_events(suffix, 300, 0)))
        worker.wait_for("driftline_events_valid_total", 300, source="tx")
        assert worker.stop() == 0
        # caught up, restarted on the same broker: no false alarm (Tansu's end
        # offsets lag behind the last record, the check fetches it)
        again = WorkerProcess(tmp_path, config).start()
        assert again.stop() == 0

        moved = {**config, "kafka": {**config["kafka"], "bootstrap_servers": other.bootstrap}}
        refused = WorkerProcess(tmp_path, moved)
        result = run_cli("worker", "-c", str(refused.config_path), timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert "beyond the end of their partitions" in result.stderr
        assert f"e2e-{suffix}:offsets:tx" in result.stderr
        assert "driftline offsets reset" in result.stderr

        shown = run_cli("offsets", "show", "-c", str(refused.config_path), timeout=120)
        assert shown.returncode == 0 and "AHEAD" in shown.stdout, shown.stdout + shown.stderr
        reset = run_cli("offsets", "reset", "-c", str(refused.config_path), "--source", "tx")
        assert reset.returncode == 0, reset.stderr
        assert "forgot the stored offsets of" in reset.stdout

        fresh = WorkerProcess(tmp_path, moved).start()
        asyncio.run(produce(other.bootstrap, topic, good_events(f"{suffix}-b", 50, 0)))
        fresh.wait_for("driftline_events_valid_total", 50, source="tx")
        assert fresh.metric_sum("driftline_events_replayed_total", source="tx") == 0
        assert fresh.stop() == 0
    finally:
        other.stop()
        server.stop()
