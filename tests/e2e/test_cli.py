"""The CLI as a user meets it: helpful errors, exit code 2, never a traceback."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from driftline.streams.local.ports import find_free_port
from driftline.streams.topics import create_topics, wait_for_broker
from tests.worker_process import CONTRACTS, run_cli

GOOD = f"""
sources:
  - name: tx
    topic: tx
    schema: {CONTRACTS / "transactions.schema.json"}
    entity_key: user_id
    event_time: event_time
"""


def write(tmp_path: Path, text: str, name: str = "driftline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_config_ok_without_connecting(tmp_path: Path) -> None:
    result = run_cli("check-config", str(write(tmp_path, GOOD)))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "fastjsonschema" in result.stdout and "tx.dlq" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("entity_key", "entity_kee"), "unknown key (did you mean 'entity_key'?)"),
        (
            GOOD + "kafka:\n  session_timeout_s: -3\n",
            "kafka.session_timeout_s: Input should be greater than 0",
        ),
        (GOOD + "kafka:\n  sasl_password: hunter2\n", "secrets are read from the environment only"),
        (GOOD + "redis:\n  url: http://x\n", "redis.url: expected a redis://"),
        ("sources: [\n", "not valid YAML"),
        ("app_id: x\n", "sources: Field required"),
        (GOOD.replace("transactions.schema.json", "nope.json"), "contract file does not exist"),
        (
            GOOD.replace("entity_key: user_id", "entity_key: account"),
            "entity key field 'account' is not declared",
        ),
        (
            GOOD + "    quality:\n      fields: {amount: {min: 5, max: 1}}\n",
            "sources[0](tx).quality.fields.amount: min (5.0) is greater than max (1.0)",
        ),
        (
            GOOD + "    quality:\n      unique: {field: txn_id}\n",
            "quality.unique.field: field 'txn_id' is not declared in the contract",
        ),
        (
            GOOD + "monitors:\n  - {name: m, source: tx, field: category}\n",
            "monitors[0](m).field: field 'category' is string in the contract",
        ),
        (
            GOOD + "app_id: a\napp_id: b\n",
            "yaml:9:1: key 'app_id' is given twice (first on line 8)",
        ),
    ],
)
def test_bad_config_is_a_clear_message_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    config = write(tmp_path, text)
    for command in ("check-config", "worker"):
        args = [command, str(config)] if command == "check-config" else [command, "-c", str(config)]
        result = run_cli(*args)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert str(config) in result.stderr or "contract" in result.stderr


def test_secret_never_echoed(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        GOOD
        + "kafka:\n  security_protocol: SASL_SSL\n  sasl_username: bob\n  session_timeout_s: 0\n",
    )
    result = run_cli(
        "check-config", str(config), env={"DRIFTLINE_KAFKA__SASL_PASSWORD": "s3cr3t-value"}
    )
    assert result.returncode == 2
    assert "s3cr3t-value" not in result.stderr + result.stdout


def test_env_overrides_the_file(tmp_path: Path) -> None:
    result = run_cli(
        "check-config",
        str(write(tmp_path, GOOD)),
        env={"DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": "broker-9:9093", "DRIFTLINE_METRICS__PORT": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert "broker-9:9093" in result.stdout and "metrics disabled" in result.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("worker", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "config file not found" in result.stderr and "Traceback" not in result.stderr


def test_worker_processes_need_room_for_their_metrics_ports(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD + "metrics:\n  port: 65535\n")
    result = run_cli("worker", "-c", str(config), "--processes", "2")
    assert result.returncode == 2, result.stderr
    assert "metrics ports 65535..+1 exceed 65535" in result.stderr
    assert "Traceback" not in result.stderr
    bad = run_cli("worker", "-c", str(config), "--processes", "0")
    assert bad.returncode == 2 and "--processes" in bad.stderr


def test_an_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = write(tmp_path, GOOD + f"worker:\n  data_dir: {blocker / 'faust'}\n")
    result = run_cli("worker", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert "worker.data_dir" in result.stderr and "cannot create it" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_without_a_broker_is_a_clear_message_and_exit_2(tmp_path: Path) -> None:
    port = find_free_port()  # free a moment ago: nothing listens on it
    config = write(
        tmp_path, GOOD + f"kafka:\n  bootstrap_servers: 127.0.0.1:{port}\nmetrics:\n  port: 0\n"
    )
    for extra in ((), ("--processes", "2")):
        result = run_cli(
            "worker", "-c", str(config), *extra, env={"DRIFTLINE_KAFKA__STARTUP_TIMEOUT_S": "2"}
        )
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        assert "Traceback" not in out
        assert (
            f"{config}: kafka.bootstrap_servers: cannot reach Kafka at 127.0.0.1:{port} "
            "(no broker answered;" in result.stderr
        ), out
        assert "kafka.startup_timeout_s (now 2s)" in result.stderr, out


def test_produce_refuses_a_topic_that_does_not_exist(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = f"produce-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(kafka_bootstrap, {topic: 1}))
    config = write(tmp_path, GOOD)
    events = tmp_path / "events.jsonl"
    events.write_text('{"user_id": "u1"}\n{"user_id": "u2"}\n')
    env = {"DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    typo = run_cli("produce", "-c", str(config), "--topic", topic + "z", str(events), env=env)
    assert typo.returncode == 2, typo.stderr
    assert "Traceback" not in typo.stderr
    assert (
        f"topic '{topic}z' does not exist on Kafka at {kafka_bootstrap} "
        f"(did you mean '{topic}'?); its topics: "
    ) in typo.stderr, typo.stderr
    assert "sent" not in typo.stderr
    topics = asyncio.run(wait_for_broker({"bootstrap_servers": kafka_bootstrap}, timeout_s=30))
    assert topic in topics and topic + "z" not in topics  # nothing was sent, nothing created
    ok = run_cli("produce", "-c", str(config), "--topic", topic, str(events), env=env)
    assert ok.returncode == 0, ok.stderr
    assert f"sent 2 record(s) to {topic}" in ok.stderr
