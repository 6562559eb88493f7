"""Several versions of one feature group in one config: parsing, and how a name picks one."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.features.definitions import (
    FeatureGroup,
    group_refs,
    newest_versions,
    parse_group_ref,
    resolve_group,
)
from driftline.features.exceptions import FeatureDefinitionError
from driftline.streams.errors import ConfigError
from driftline.streams.settings import Settings, load_settings

CONTRACT = (
    Path(__file__).resolve().parents[2] / "schemas" / "contracts" / "transactions.schema.json"
)
SOURCES = f"""
sources:
  - name: tx
    topic: tx
    schema: {CONTRACT}
    entity_key: user_id
  - name: tx2
    topic: tx2
    schema: {CONTRACT}
    entity_key: user_id
"""
V1 = "  - {name: spend, version: 1, source: tx, values: {amount: [sum]}, windows: [1h]}\n"
V2 = "  - {name: spend, version: 2, source: tx, values: {amount: [sum, mean]}, windows: [5m, 1h]}\n"
OTHER = "  - {name: clicks, version: 3, source: tx, values: {amount: [count]}, windows: [1m]}\n"


def load(tmp_path: Path, groups: str, monitors: str = "") -> Settings:
    path = tmp_path / "c.yaml"
    path.write_text(SOURCES + "feature_groups:\n" + groups + monitors)
    return load_settings(path, env={})


def compile_groups(settings: Settings) -> dict[str, tuple[FeatureGroup, ...]]:
    from driftline.streams.sources import build_feature_groups, build_parsers

    return build_feature_groups(settings, build_parsers(settings), "c.yaml")


def test_two_versions_of_one_name_are_both_compiled(tmp_path: Path) -> None:
    groups = compile_groups(load(tmp_path, V2 + OTHER + V1))
    assert [(g.name, g.version) for g in groups["tx"]] == [
        ("spend", 2),
        ("clicks", 3),
        ("spend", 1),
    ]
    assert groups["tx2"] == ()


def test_the_same_version_twice_is_refused(tmp_path: Path) -> None:
    same = V1.replace("[sum]", "[max]")
    with pytest.raises(ConfigError) as info:
        compile_groups(load(tmp_path, V1 + V2 + same))
    assert str(info.value) == (
        "c.yaml: feature_groups[2](spend).version: feature group 'spend' version 1 is "
        "defined twice (bump 'version' for a changed definition)"
    )


def test_versions_of_one_name_must_read_one_source(tmp_path: Path) -> None:
    moved = V2.replace("source: tx,", "source: tx2,")
    with pytest.raises(ConfigError) as info:
        compile_groups(load(tmp_path, V1 + moved))
    message = str(info.value)
    assert message.startswith(
        "c.yaml: feature_groups[1](spend).source: feature group 'spend' version 2 reads "
        "source 'tx2', but version 1 reads 'tx'"
    )
    assert "handover from one version to the next is at that source's offsets" in message


def test_group_references() -> None:
    assert parse_group_ref("user.spend-x") == ("user.spend-x", None)
    assert parse_group_ref("spend@12") == ("spend", 12)
    for bad in ("spend@0", "spend@", "@2", "spend@v2", "a:b"):
        with pytest.raises(FeatureDefinitionError):
            parse_group_ref(bad)

    def g(name: str, version: int) -> FeatureGroup:
        return FeatureGroup.from_config(
            {
                "name": name,
                "version": version,
                "source": "tx",
                "entity_key": "user_id",
                "values": {"amount": ["sum"]},
                "windows": ["1h"],
            }
        )

    groups = [g("spend", 2), g("spend", 7), g("spend", 1), g("clicks", 1)]
    assert {k: v.version for k, v in newest_versions(groups).items()} == {"spend": 7, "clicks": 1}
    assert sorted(group_refs(groups)) == [
        "clicks",
        "clicks@1",
        "spend",
        "spend@1",
        "spend@2",
        "spend@7",
    ]
    assert resolve_group(groups, "spend") is groups[1]
    assert resolve_group(groups, "spend@1") is groups[2]
    assert resolve_group(groups, "spend@3") is None
    assert resolve_group(groups, "spend@x") is None


@pytest.mark.parametrize(
    ("feature", "version", "message"),
    [
        ("spend.amount_mean_1h", 2, None),  # the name alone: the newest configured version
        ("spend@1.amount_sum_1h", 1, None),
        ("spend@1.amount_mean_1h", None, "group 'spend' has no feature 'amount_mean_1h'"),
        ("spend@3.amount_sum_1h", None, "unknown feature group 'spend@3' (known: spend, spend@1"),
    ],
)
def test_a_feature_monitor_reads_the_newest_version_unless_told(
    tmp_path: Path, feature: str, version: int | None, message: str | None
) -> None:
    from driftline.streams.sources import build_monitors, build_parsers

    monitors = f"monitors:\n  - {{name: m, source: tx, feature: {feature}}}\n"
    s = load(tmp_path, V1 + V2, monitors)
    groups = compile_groups(s)
    if message is None:
        [monitor] = build_monitors(s, build_parsers(s), "c.yaml", groups)["tx"]
        assert resolve_group(groups["tx"], str(monitor.feature_group)).version == version  # type: ignore[union-attr]
        return
    with pytest.raises(ConfigError) as info:
        build_monitors(s, build_parsers(s), "c.yaml", groups)
    assert message in str(info.value)


def test_the_worker_pairs_a_feature_monitor_with_the_version_it_names(tmp_path: Path) -> None:
    from driftline.drift.config import MonitorConfig

    groups = compile_groups(load(tmp_path, V1 + V2))["tx"]
    refs = group_refs(groups)
    newest = MonitorConfig.from_config(
        {"name": "a", "source": "tx", "feature": "spend.amount_sum_1h"}
    )
    pinned = MonitorConfig.from_config(
        {"name": "b", "source": "tx", "feature": "spend@1.amount_sum_1h"}
    )
    assert refs[str(newest.feature_group)].version == 2
    assert refs[str(pinned.feature_group)].version == 1


def test_training_features_name_a_version_with_at(tmp_path: Path) -> None:
    from driftline.streams.training import _column_names, _parse_features

    groups = [g for gs in compile_groups(load(tmp_path, V1 + V2)).values() for g in gs]
    wanted = _parse_features(["spend:amount_sum_1h", "spend@1:amount_sum_1h"], groups)
    assert [(w.label, w.group.version, w.features) for w in wanted] == [
        ("spend", 2, ("amount_sum_1h",)),
        ("spend@1", 1, ("amount_sum_1h",)),
    ]
    assert list(_column_names(wanted).values()) == ["spend:amount_sum_1h", "spend@1:amount_sum_1h"]
    # the newest version named with @N is the same request as the name alone
    [same] = _parse_features(["spend@2:amount_mean_5m", "spend:amount_sum_1h"], groups)
    assert (same.label, same.features) == ("spend", ("amount_mean_5m", "amount_sum_1h"))
    with pytest.raises(ConfigError, match="the config has versions 1, 2 of spend, not '5'"):
        _parse_features(["spend@5:amount_sum_1h"], groups)
    with pytest.raises(ConfigError, match="group spend@1 has no feature 'amount_mean_5m'"):
        _parse_features(["spend@1:amount_mean_5m"], groups)


def test_features_get_reads_the_newest_version_unless_told(tmp_path: Path) -> None:
    from driftline.streams.cli.features import pick_group

    s = load(tmp_path, V1 + V2)
    assert pick_group(s, "c.yaml", None).version == 2  # one name: no --group needed
    assert pick_group(s, "c.yaml", "spend").version == 2
    assert pick_group(s, "c.yaml", "spend", 1).version == 1
    with pytest.raises(ConfigError, match=r"has no version 3 in the config \(configured: 1, 2\)"):
        pick_group(s, "c.yaml", "spend", 3)
    s = load(tmp_path, V1 + V2 + OTHER)
    with pytest.raises(ConfigError, match=r"several feature groups \(spend, clicks\)"):
        pick_group(s, "c.yaml", None)


async def test_the_worker_computes_both_versions_and_feeds_each_monitor_its_own() -> None:
    import orjson
    from prometheus_client import CollectorRegistry

    from driftline.drift.config import MonitorConfig
    from driftline.drift.samples import decode_samples
    from driftline.schemas import build_parser
    from driftline.sinks.feature_store import MemoryFeatureStore
    from driftline.sinks.kafka_sink import MemoryKafkaSink
    from driftline.sinks.metrics import WorkerMetrics
    from driftline.streams.worker.pipeline import SourcePipeline
    from driftline.streams.worker.records import RawRecord

    def version(n: int, aggregation: str) -> FeatureGroup:
        return FeatureGroup.from_config(
            {
                "name": "spend",
                "version": n,
                "source": "transactions",
                "entity_key": "user_id",
                "values": {"amount": [aggregation]},
                "windows": ["1h"],
            }
        )

    v1, v2 = version(1, "count"), version(2, "sum")
    store, values = MemoryFeatureStore(), MemoryKafkaSink()

    def monitor(name: str, feature: str) -> MonitorConfig:
        return MonitorConfig.from_config(
            {"name": name, "source": "transactions", "feature": feature}
        )

    pipeline = SourcePipeline(
        source="transactions",
        dead_letter_topic="tx.dlq",
        parser=build_parser(
            encoding="json",
            contract_path=CONTRACT,
            entity_key="user_id",
            event_time_field="event_time",
            event_time_unit="ms",
            max_event_bytes=4096,
        ),
        dead_letters=values,
        store=store,
        groups=(v1, v2),
        metrics=WorkerMetrics(["transactions"], CollectorRegistry()),
        monitors=(
            monitor("old", "spend@1.amount_count_1h"),
            monitor("new", "spend.amount_sum_1h"),
        ),
        values_topic="values",
    )
    events = [
        {"event_id": f"e{i}", "user_id": "u1", "amount": 4.0, "category": "fuel", "event_time": t}
        for i, t in enumerate((1_000, 2_000))
    ]
    await pipeline.process(
        [
            RawRecord("transactions", 0, i, 10_000, b"k", orjson.dumps(e), ())
            for i, e in enumerate(events)
        ]
    )
    [one] = await store.get(v1, ["u1"], as_of_ms=2_000)
    [two] = await store.get(v2, ["u1"], as_of_ms=2_000)
    assert (one.values, two.values) == ({"amount_count_1h": 2}, {"amount_sum_1h": 8.0})
    sampled: dict[str, float] = {}
    for topic, _, raw, _ in values.written:
        if topic == "values":
            decoded = decode_samples(raw)
            assert decoded is not None
            sampled[orjson.loads(raw)["m"]] = decoded[3][0][2]
    assert sampled == {"old": 2, "new": 8.0}
