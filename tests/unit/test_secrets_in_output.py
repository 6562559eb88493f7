"""No secret reaches the terminal: ``check-config`` and settings errors redact credentials.

``driftline check-config`` is run in-process (click's runner) on a config
whose URLs carry a password, from the file and from the environment; the
password must appear in neither stdout nor stderr, and the error must still
say what is wrong (exit code 2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from driftline.errors import redact
from driftline.streams.cli.main import main, user_errors
from driftline.streams.errors import DriftlineError
from tests.worker_process import CONTRACTS

SECRET = "s3cret"
CONFIG = f"""
sources:
  - name: tx
    topic: tx
    schema: {CONTRACTS / "transactions.schema.json"}
    entity_key: user_id
    event_time: event_time
"""


def check_config(
    tmp_path: Path, extra: str = "", env: dict[str, str] | None = None
) -> tuple[int, str]:
    path = tmp_path / "driftline.yaml"
    path.write_text(CONFIG + extra)
    result = CliRunner().invoke(main, ["check-config", str(path)], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        (
            "redis:\n  url: redis://user:s3cret@host:6379/0\n",
            {},
            "redis.url: put no credentials in the URL; set DRIFTLINE_REDIS__PASSWORD instead "
            "(got 'redis://***@host:6379/0')",
        ),
        (
            "",
            {"DRIFTLINE_REDIS__URL": "redis://user:s3cret@host:6379/0"},
            "redis.url: put no credentials in the URL",
        ),
        (
            "",
            {"DRIFTLINE_REDIS__URL": "rediss://:s3cret@host:6380/0"},
            "redis.url: put no credentials in the URL",
        ),
        (
            "",
            {"DRIFTLINE_REDIS__URL": "redis://host:6379/0?password=s3cret"},
            "redis.url: put no credentials in the URL",
        ),
        (
            "redis:\n  url: http://user:s3cret@host:6379/0\n",
            {},
            "redis.url: expected a redis://, rediss:// or unix:// URL (got 'http://***@host",
        ),
        (
            "",
            {"DRIFTLINE_SCHEMA_REGISTRY__URL": "https://svc:s3cret@registry:8081"},
            "schema_registry.url: put no credentials in the URL",
        ),
        (
            "",
            {"DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": "svc:s3cret@broker:9092"},
            "kafka.bootstrap_servers: expected host:port",
        ),
        (
            "",
            {"DRIFTLINE_REDIS": '{"url": "redis://user:s3cret@host'},
            "a DRIFTLINE_<SECTION> variable must be a JSON object",
        ),
    ],
)
def test_check_config_never_prints_a_password(
    tmp_path: Path, extra: str, env: dict[str, str], expected: str
) -> None:
    code, output = check_config(tmp_path, extra, env)
    assert SECRET not in output
    assert code == 2, output
    assert expected in output
    assert "Traceback" not in output


def test_check_config_still_prints_a_url_without_credentials(tmp_path: Path) -> None:
    code, output = check_config(tmp_path, env={"DRIFTLINE_REDIS__URL": "redis://cache:6379/2"})
    assert code == 0, output
    assert "redis   redis://cache:6379/2" in output


def test_error_messages_of_any_command_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    @user_errors
    def failing() -> None:
        raise DriftlineError("cannot reach Redis at redis://user:s3cret@host:6379/0: refused")

    with pytest.raises(SystemExit) as exited:
        failing()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://***@host:6379/0: refused" in err
    assert SECRET not in err


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://user:s3cret@host:6379/0", "redis://***@host:6379/0"),
        ("at 'rediss://:s3cret@h:6380' now", "at 'rediss://***@h:6380' now"),
        ("https://a:b@c/x?y=1", "https://***@c/x?y=1"),
        ("redis://h/0?db=1&password=s3cret&x=2", "redis://h/0?db=1&password=***&x=2"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        ("b1:9092,svc:s3cret@b2:9092", "b1:9092,***@b2:9092"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("http://[::1]:9464/metrics", "http://[::1]:9464/metrics"),
        ("owner bob@example.com at 10:30", "owner bob@example.com at 10:30"),
    ],
)
def test_redact_hides_url_credentials_only(text: str, shown: str) -> None:
    assert redact(text) == shown
