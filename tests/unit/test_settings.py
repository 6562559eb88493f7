"""Settings: precedence, secrets, security options, error messages."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from driftline.streams.errors import ConfigError
from driftline.streams.settings import load_settings

CONTRACT = (
    Path(__file__).resolve().parents[2] / "schemas" / "contracts" / "transactions.schema.json"
)
BASE = f"""
sources:
  - name: tx
    topic: tx
    schema: {CONTRACT}
    entity_key: user_id
"""


def load(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + extra)
    return load_settings(path, env=env or {})


def test_defaults_and_dead_letter_topic(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.app_id == "driftline"
    assert s.sources[0].dlq_topic == "tx.dlq"
    assert s.kafka.aiokafka_kwargs() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "kafka:\n  bootstrap_servers: a:1\n",
        env={"DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": "b:2"},
    )
    assert s.kafka.bootstrap_servers == "b:2"
    assert load(tmp_path, "kafka:\n  bootstrap_servers: a:1\n").kafka.bootstrap_servers == "a:1"


def test_settings_are_immutable(tmp_path: Path) -> None:
    s = load(tmp_path)
    with pytest.raises(Exception, match="frozen"):
        s.kafka.bootstrap_servers = "x:1"  # type: ignore[misc]


def test_relative_contract_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "c.json").write_bytes(CONTRACT.read_bytes())
    path = tmp_path / "c.yaml"
    path.write_text(
        "sources:\n  - {name: a, topic: a, schema: contracts/c.json, entity_key: user_id}\n"
    )
    assert load_settings(path, env={}).sources[0].schema_file == tmp_path / "contracts" / "c.json"


def test_sasl_ssl_builds_client_arguments_with_secret_from_env(tmp_path: Path) -> None:
    extra = "kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: bob\n"
    with pytest.raises(ConfigError, match="DRIFTLINE_KAFKA__SASL_PASSWORD"):
        load(tmp_path, extra)
    s = load(tmp_path, extra, env={"DRIFTLINE_KAFKA__SASL_PASSWORD": "pw"})
    kwargs = s.kafka.aiokafka_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "bob" and kwargs["sasl_plain_password"] == "pw"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert "pw" not in repr(s) and "pw" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("kafka", "sasl_password"),
        ("redis", "password"),
        ("metrics", "token"),
        ("kafka", "ssl_key_password"),
    ],
)
def test_secrets_in_the_file_are_refused(tmp_path: Path, section: str, key: str) -> None:
    with pytest.raises(
        ConfigError, match=f"{section}.{key}: secrets are read from the environment only"
    ):
        load(tmp_path, f"{section}:\n  {key}: oops\n")


def test_redis_url_must_not_carry_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DRIFTLINE_REDIS__PASSWORD"):
        load(tmp_path, "redis:\n  url: redis://:pw@host:6379/0\n")


def test_duplicate_sources_and_dlq_collisions(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"sources:\n  - {{name: a, topic: t, schema: {CONTRACT}, entity_key: user_id}}\n"
        f"  - {{name: a, topic: t.dlq, schema: {CONTRACT}, entity_key: user_id}}\n"
    )
    with pytest.raises(ConfigError, match="source names must be unique; repeated: a"):
        load_settings(path, env={})


def test_bad_bootstrap_and_yaml_position(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka.bootstrap_servers: expected host:port"):
        load(tmp_path, "kafka:\n  bootstrap_servers: nohost\n")
    path = tmp_path / "broken.yaml"
    path.write_text("sources:\n  - name: a\n    topic: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+:\d+: not valid YAML"):
        load_settings(path, env={})


def test_quality_section_is_typed_and_errors_name_the_key(tmp_path: Path) -> None:
    quality = "    quality:\n      unique: {field: event_id, horizon: 2h}\n"
    s = load(tmp_path, quality)
    assert s.sources[0].quality.unique is not None
    assert s.sources[0].quality.unique.horizon_ms == 2 * 3_600_000
    bad = "    quality:\n      unique: {field: event_id, horizon: 2 hours}\n"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, bad)
    message = str(info.value)
    assert "sources[0](tx).quality.unique.horizon: '2 hours' is not a duration" in message
    assert "at least 1 item" not in message  # no echo of the failed list itself


def test_quality_fields_must_be_in_the_contract(tmp_path: Path) -> None:
    from driftline.streams.sources import build_parsers, build_quality

    s = load(tmp_path, "    quality:\n      fields: {amout: {max: 1}}\n")
    with pytest.raises(ConfigError, match=r"quality.fields: field 'amout' is not declared"):
        build_quality(s, build_parsers(s), "c.yaml")
    s = load(tmp_path, "    quality:\n      completeness: [amount, currency]\n")
    [checker] = build_quality(s, build_parsers(s), "c.yaml").values()
    assert checker.completeness == ("amount", "currency")


FEATURES = """
feature_groups:
  - name: spend
    version: 1
    source: tx
    values: {amount: [sum, mean]}
    last: [category]
    windows: [1h]
"""


def test_a_feature_monitor_may_monitor_partial_windows_when_told(tmp_path: Path) -> None:
    from driftline.streams.sources import build_feature_groups, build_monitors, build_parsers

    monitors = (
        "monitors:\n  - {name: m, source: tx, feature: spend.amount_mean_1h, skip_first: 0s}\n"
    )
    s = load(tmp_path, FEATURES + monitors)
    parsers = build_parsers(s)
    [monitor] = build_monitors(s, parsers, "c.yaml", build_feature_groups(s, parsers, "c.yaml"))[
        "tx"
    ]
    assert monitor.skip_first_ms == 0


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        ("spend.amount_mean_1h", None),
        ("nope.amount_mean_1h", "monitors[0](m).feature: unknown feature group 'nope'"),
        ("spend.amount_men_1h", "no feature 'amount_men_1h' (did you mean 'amount_mean_1h'?)"),
        ("spend.category_last", "'category_last' is a last value"),
    ],
)
def test_feature_monitors_name_a_feature_of_their_source(
    tmp_path: Path, feature: str, message: str | None
) -> None:
    from driftline.streams.sources import build_feature_groups, build_monitors, build_parsers

    monitors = f"monitors:\n  - {{name: m, source: tx, feature: {feature}}}\n"
    s = load(tmp_path, FEATURES + monitors)
    parsers = build_parsers(s)
    groups = build_feature_groups(s, parsers, "c.yaml")
    if message is None:
        [monitor] = build_monitors(s, parsers, "c.yaml", groups)["tx"]
        assert monitor.watched == feature
        # it learns from full windows only: skip the window's length after the first value
        assert (monitor.skip_first, monitor.skip_first_ms) == ("1h", 3_600_000)
        return
    with pytest.raises(ConfigError) as info:
        build_monitors(s, parsers, "c.yaml", groups)
    assert message in str(info.value)


def test_a_feature_monitor_must_watch_a_group_of_its_own_source(tmp_path: Path) -> None:
    from driftline.streams.sources import build_feature_groups, build_monitors, build_parsers

    other = f"""  - name: tx2
    topic: tx2
    schema: {CONTRACT}
    entity_key: user_id
"""
    monitors = "monitors:\n  - {name: m, source: tx2, feature: spend.amount_sum_1h}\n"
    s = load(tmp_path, other + FEATURES + monitors)
    parsers = build_parsers(s)
    groups = build_feature_groups(s, parsers, "c.yaml")
    with pytest.raises(ConfigError, match="computed from source 'tx', not from the monitor's"):
        build_monitors(s, parsers, "c.yaml", groups)


def test_a_group_may_be_keyed_by_another_declared_field(tmp_path: Path) -> None:
    from driftline.streams.sources import build_feature_groups, build_parsers

    group = (
        "feature_groups:\n  - {name: cat, version: 1, source: tx, entity_key: %s, "
        "values: {amount: [sum]}, windows: [1h]}\n"
    )
    s = load(tmp_path, group % "category")
    [g] = build_feature_groups(s, build_parsers(s), "c.yaml")["tx"]
    assert g.entity_key == "category"
    s = load(tmp_path, group % "merchant")
    with pytest.raises(ConfigError, match="merchant are not declared in the contract"):
        build_feature_groups(s, build_parsers(s), "c.yaml")


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "metrics:\n  port: 9000\n  host: 127.0.0.1\n  port: 9001\n")
    # BASE is 6 lines (a leading blank one): the second port is on line 10
    assert str(info.value) == (
        f"{tmp_path / 'c.yaml'}:10:3: key 'port' is given twice (first on line 8); keep one"
    )
    with pytest.raises(ConfigError, match=r"c.yaml:8:1: key 'sources' is given twice"):
        load(tmp_path, "kafka: {}\nsources: []\n")
    # the same key in two different mappings is fine
    s = load(tmp_path, "kafka:\n  session_timeout_s: 9\nredis:\n  socket_timeout_s: 9\n")
    assert s.kafka.session_timeout_s == s.redis.socket_timeout_s == 9


def test_declared_types_and_what_can_hold_a_number() -> None:
    from driftline.schemas.fields import never_numeric

    for declared in (["number"], ["integer|null"], ["null", "long(timestamp-millis)"], ["any"]):
        assert not never_numeric(declared), declared
    assert not never_numeric(["string", "double"])  # numeric in one contract of a source
    assert not never_numeric(["Currency"])  # a named Avro type defined elsewhere: unknown
    assert not never_numeric([])  # not declared at all: the caller says so
    for declared in (["string"], ["null|string"], ["boolean"], ["bytes(decimal)"], ["enum"]):
        assert never_numeric(declared), declared


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "monitors:\n  - {name: m, source: tx, field: category}\n",
            "c.yaml: monitors[0](m).field: field 'category' is string in the contract "
            "transactions.schema.json of source tx; a monitor watches numbers (number or "
            "integer), so it would never see a value; monitor a numeric field",
        ),
        (
            "feature_groups:\n  - {name: spend, version: 1, source: tx, "
            "values: {amount: [sum], category: [mean]}, windows: [1h]}\n",
            "c.yaml: feature_groups[0](spend).values.category: field 'category' is string in "
            "the contract transactions.schema.json of source tx; values aggregates numbers",
        ),
    ],
)
def test_numbers_are_expected_of_numeric_fields(tmp_path: Path, extra: str, message: str) -> None:
    from driftline.streams.sources import build_feature_groups, build_monitors, build_parsers

    s = load(tmp_path, extra)
    parsers = build_parsers(s)
    with pytest.raises(ConfigError) as info:
        build_monitors(s, parsers, "c.yaml", build_feature_groups(s, parsers, "c.yaml"))
    assert message in str(info.value)


def test_numeric_fields_of_an_avro_contract(tmp_path: Path) -> None:
    from driftline.streams.sources import build_feature_groups, build_monitors, build_parsers

    def avro_settings(extra: str):
        path = tmp_path / "avro.yaml"
        path.write_text((BASE + extra).replace(CONTRACT.name, "transactions.avsc"))
        return load_settings(path, env={})

    s = avro_settings(
        "feature_groups:\n  - {name: g, version: 1, source: tx, values: {amount: [sum]}, "
        "distinct: [category], last: [currency], windows: [1h]}\n"
        "monitors:\n  - {name: m, source: tx, field: event_time}\n"
    )
    parsers = build_parsers(s)
    groups = build_feature_groups(s, parsers, "c.yaml")
    [m] = build_monitors(s, parsers, "c.yaml", groups)["tx"]
    assert m.field == "event_time" and groups["tx"][0].values == {"amount": ("sum",)}
    s = avro_settings("monitors:\n  - {name: m, source: tx, field: currency}\n")
    with pytest.raises(ConfigError, match=r"field 'currency' is null\|string in the contract"):
        build_monitors(s, build_parsers(s), "c.yaml")


def test_redis_cluster_shards_default_and_their_limits(tmp_path: Path) -> None:
    assert load(tmp_path).redis.store_shards == 1
    assert load(tmp_path, "redis:\n  cluster: true\n").redis.store_shards == 64
    assert load(tmp_path, "redis:\n  cluster: true\n  shards: 12\n").redis.store_shards == 12
    from_env = load(tmp_path, env={"DRIFTLINE_REDIS__CLUSTER": "true"})
    assert from_env.redis.cluster and from_env.redis.store_shards == 64
    with pytest.raises(ConfigError, match=r"redis\.shards"):
        load(tmp_path, "redis:\n  shards: 5000\n")
    with pytest.raises(ConfigError, match="braces would become the Redis Cluster hash tag"):
        load(tmp_path, "redis:\n  cluster: true\n  key_prefix: 'a{b}'\n")
    with pytest.raises(ConfigError, match="not a unix:// socket"):
        load(tmp_path, "redis:\n  cluster: true\n  url: unix:///tmp/r.sock\n")
