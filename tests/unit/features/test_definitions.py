"""Feature group definitions: validation, derived values, names and the fingerprint."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from driftline.features.definitions import FeatureGroup, Window
from driftline.features.exceptions import FeatureDefinitionError

CONFIG: dict[str, Any] = {
    "name": "user_spend",
    "version": 1,
    "source": "transactions",
    "entity_key": "user_id",
    "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
    "distinct": ["category"],
    "last": ["amount", "category"],
    "windows": ["1m", "5m", "1h", "24h"],
    "buckets_per_window": 60,
    "allowed_lateness": "30s",
    "future_tolerance": "5m",
}


def config(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(CONFIG)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_from_config_builds_the_group() -> None:
    g = FeatureGroup.from_config(CONFIG)
    assert g.name == "user_spend" and g.version == 1
    assert g.source == "transactions" and g.entity_key == "user_id"
    assert dict(g.values) == {"amount": ("count", "sum", "mean", "min", "max", "std")}
    assert g.distinct == ("category",) and g.last == ("amount", "category")
    assert [w.name for w in g.windows] == ["1m", "5m", "1h", "24h"]
    assert [w.resolution_ms for w in g.windows] == [1_000, 5_000, 60_000, 1_440_000]
    assert all(w.n_buckets == 60 for w in g.windows)
    assert g.resolutions == (1_000, 5_000, 60_000, 1_440_000)
    assert g.longest_window_ms == 86_400_000
    assert g.allowed_lateness_ms == 30_000 and g.future_tolerance_ms == 300_000
    assert g.ttl_ms == 86_400_000 + 30_000


def test_feature_names_are_readable_and_stable() -> None:
    names = FeatureGroup.from_config(CONFIG).feature_names()
    assert names[:4] == (
        "amount_count_1m",
        "amount_count_5m",
        "amount_count_1h",
        "amount_count_24h",
    )
    assert "amount_sum_5m" in names
    assert "amount_std_1h" in names
    assert "category_distinct_count_24h" in names
    assert names[-2:] == ("amount_last", "category_last")
    assert len(names) == 6 * 4 + 4 + 2
    # config order of aggregations and windows does not change names or their order
    shuffled = config(
        values={"amount": ["std", "max", "min", "mean", "sum", "count"]},
        windows=["24h", "1h", "1m", "5m"],
    )
    assert FeatureGroup.from_config(shuffled).feature_names() == names


def test_explicit_resolution_and_shared_rings() -> None:
    g = FeatureGroup.from_config(
        config(
            windows=[
                "1m",
                "5m",
                {"window": "24h", "resolution": "1h"},
                {"window": "30m", "resolution": "5s"},
            ],
        )
    )
    by_name = {w.name: w for w in g.windows}
    assert by_name["24h"].resolution_ms == 3_600_000 and by_name["24h"].n_buckets == 24
    assert by_name["30m"].resolution_ms == 5_000 and by_name["30m"].n_buckets == 360
    # 5m (60 x 5s) and 30m (360 x 5s) share one ring that keeps 360 buckets
    assert g.resolutions == (1_000, 5_000, 3_600_000)
    assert dict(g.layout.ring_buckets) == {1_000: 60, 5_000: 360, 3_600_000: 24}


def test_buckets_per_window_must_divide_the_window() -> None:
    g = FeatureGroup.from_config(config(windows=["90s"], buckets_per_window=60))
    assert g.windows[0].resolution_ms == 1_500
    with pytest.raises(FeatureDefinitionError, match="not a whole number of ms") as info:
        FeatureGroup.from_config(config(windows=["1m", "250ms"], buckets_per_window=60))
    assert info.value.group == "user_spend" and info.value.key == "windows[1]"


@pytest.mark.parametrize(
    ("changes", "key", "needle"),
    [
        (
            {"values": {"amount": ["count", "median"]}},
            "values.amount",
            "unknown aggregation 'median'",
        ),
        ({"values": {"amount": ["count", "count"]}}, "values.amount", "listed twice"),
        ({"values": {"amount": []}}, "values.amount", "at least one aggregation"),
        ({"values": {"amount": "sum"}}, "values.amount", "must be a list"),
        ({"values": {"2amount": ["sum"]}}, "values", "not a usable field name"),
        ({"windows": ["1m", "5x"]}, "windows[1]", "is not a duration"),
        ({"windows": ["1m", "60s"]}, "windows", "are the same window"),
        ({"windows": []}, "windows", "at least one window"),
        ({"windows": None}, "windows", "required"),
        ({"windows": "1m"}, "windows", "must be a list"),
        ({"windows": [{"window": "1h", "resolution": "7m"}]}, "windows[0]", "does not divide"),
        (
            {"windows": [{"window": "1h", "resolution": "1.5m"}]},
            "windows[0].resolution",
            "fractions",
        ),
        ({"windows": [{"window": "1h", "buckets": 6}]}, "windows[0].buckets", "unknown key"),
        ({"windows": [{"resolution": "1m"}]}, "windows[0].window", "required"),
        ({"windows": [{"window": "7d", "resolution": "1s"}]}, "windows[0]", "choose a coarser"),
        ({"allowed_lateness": "soon"}, "allowed_lateness", "is not a duration"),
        ({"future_tolerance": 300}, "future_tolerance", "has no unit"),
        ({"buckets_per_window": 0}, "buckets_per_window", "integer >= 1"),
        ({"version": "1"}, "version", "integer >= 1"),
        ({"source": None}, "source", "required"),
        ({"entity_key": 7}, "entity_key", "must be a string"),
        ({"distinct": "category"}, "distinct", "must be a list"),
        ({"last": ["amount", "amount"]}, "last", "listed twice"),
        ({"window": ["1m"]}, "window", "did you mean 'windows'"),
        (
            {"values": {"amount_distinct": ["count"]}, "distinct": ["amount"]},
            "distinct",
            "both be named",
        ),
        ({"values": None, "distinct": None, "last": None}, "values", "computes nothing"),
        ({"name": "user:spend"}, "name", "no ':'"),
    ],
)
def test_errors_name_the_group_and_the_key(changes: dict[str, Any], key: str, needle: str) -> None:
    with pytest.raises(FeatureDefinitionError) as info:
        FeatureGroup.from_config(config(**changes))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.key == key, str(err)
    assert needle in str(err)
    group = changes.get("name", "user_spend")
    assert str(err).startswith(f"feature group {group!r}: {key}: ")


def test_error_without_a_name() -> None:
    with pytest.raises(FeatureDefinitionError, match=r"^feature group <unnamed>: name: required"):
        FeatureGroup.from_config(config(name=None))
    with pytest.raises(FeatureDefinitionError, match="must be a mapping"):
        FeatureGroup.from_config(["not", "a", "dict"])  # type: ignore[arg-type]


def test_direct_construction_is_validated_too() -> None:
    w = Window.parse("5m")
    assert w == Window("5m", 300_000, 5_000)
    with pytest.raises(FeatureDefinitionError, match="does not spell its length"):
        Window("5m", 60_000, 1_000)
    with pytest.raises(FeatureDefinitionError, match="unknown aggregation") as info:
        FeatureGroup("g", 1, "src", "id", {"x": ("p99",)}, (), (), (w,))
    assert info.value.group == "g" and info.value.key == "values.x"


def test_fingerprint_tracks_meaning_not_documentation() -> None:
    base = FeatureGroup.from_config(CONFIG)
    fp = base.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert FeatureGroup.from_config(copy.deepcopy(CONFIG)).fingerprint() == fp
    documented = config(description="Spend per user", owner="risk-team", tags=["payments"])
    assert FeatureGroup.from_config(documented).fingerprint() == fp
    assert FeatureGroup.from_config(documented) == base
    # a different order of aggregations or windows in the config means the same thing
    same = config(windows=["24h", "1h", "5m", "1m"])
    assert FeatureGroup.from_config(same).fingerprint() == fp
    changed = [
        config(windows=["1m", "5m", "1h"]),
        config(windows=["1m", "5m", "1h", {"window": "24h", "resolution": "1h"}]),
        config(buckets_per_window=30),
        config(values={"amount": ["count", "sum", "mean", "min", "max", "var"]}),
        config(values={"amount": ["count", "sum", "mean", "min", "max", "std"], "fee": ["sum"]}),
        config(distinct=[]),
        config(last=["amount"]),
        config(allowed_lateness="1m"),
        config(future_tolerance="10m"),
        config(version=2),
        config(name="user_spend_v2"),
        config(source="payments"),
        config(entity_key="account_id"),
    ]
    fingerprints = {FeatureGroup.from_config(c).fingerprint() for c in changed}
    assert fp not in fingerprints
    assert len(fingerprints) == len(changed)
    assert hash(base) == hash(FeatureGroup.from_config(documented))
