"""MonitorConfig: defaults, validation and the errors a user sees."""

from __future__ import annotations

import pytest

from driftline.drift import DEFAULT_DETECTORS, DriftConfigError, MonitorConfig

BASE = {"name": "amount", "source": "transactions", "field": "amount"}


def test_defaults_are_the_benchmarked_ones() -> None:
    config = MonitorConfig.from_config(BASE)
    assert config.detectors == DEFAULT_DETECTORS == ("page_hinkley", "adwin")
    assert config.statistics == ("location", "scale")
    assert (config.warmup, config.stable_after, config.max_segments) == (1000, 1000, 50)
    assert config.segment_by is None
    assert config.page_hinkley.alpha == 1.0
    assert (config.page_hinkley.delta, config.page_hinkley.threshold) == (0.25, 30.0)
    assert (config.adwin.delta, config.adwin.clock) == (1e-4, 1)


def test_config_is_frozen_and_hashable() -> None:
    config = MonitorConfig.from_config(BASE)
    with pytest.raises(ValueError):
        config.warmup = 10  # type: ignore[misc]
    assert hash(config) == hash(MonitorConfig.from_config(dict(BASE)))


def test_single_detector_may_be_a_string_and_nested_params_validate() -> None:
    config = MonitorConfig.from_config(
        {**BASE, "detectors": "adwin", "adwin": {"delta": 0.001}, "segment_by": "country"}
    )
    assert config.detectors == ("adwin",)
    assert config.adwin.delta == 0.001
    assert config.adwin.clock == 1


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        (
            {"detectors": ["adwin", "kswin"]},
            "detectors.1",
            "unknown detector 'kswin'; known: page_hinkley, adwin",
        ),
        ({"detectors": []}, "detectors", "name at least one"),
        ({"detectors": ["adwin", "adwin"]}, "detectors", "listed twice: ['adwin']"),
        ({"statistics": ["location", "shape"]}, "statistics.1", "'location' or 'scale'"),
        ({"warmup": 10}, "warmup", "greater than or equal to 100"),
        ({"max_segments": 0}, "max_segments", "greater than or equal to 1"),
        ({"adwin": {"delta": 2}}, "adwin.delta", "less than 1"),
        ({"page_hinkley": {"alpha": 0}}, "page_hinkley.alpha", "greater than 0"),
        ({"warmpu": 500}, "warmpu", "unknown key (did you mean 'warmup'?)"),
        ({"adwin": {"delat": 0.1}}, "adwin.delat", "unknown key (did you mean 'delta'?)"),
        ({"page_hinkley": {"zzz": 1}}, "page_hinkley.zzz", "unknown key (known keys: alpha, delta"),
        ({"field": ""}, "field", "at least 1 character"),
        ({"feature": "spend.amount_mean_1h"}, "(monitor)", "either field"),
        ({"field": None}, "(monitor)", "give either field (an event field) or feature"),
        ({"field": None, "feature": "no_group"}, "feature", "should match pattern"),
        (
            {"field": None, "feature": "g.f", "max_entities_per_batch": 0},
            "max_entities_per_batch",
            "greater than or equal to 1",
        ),
    ],
)
def test_errors_name_monitor_and_key(extra: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(DriftConfigError) as caught:
        MonitorConfig.from_config({**BASE, **extra})
    error = caught.value
    assert (error.monitor, error.key) == ("amount", key)
    assert fragment in error.message
    assert str(error).startswith(f"drift monitor 'amount': {key}: ")
    assert isinstance(error, ValueError)


def test_missing_name_and_bad_name() -> None:
    with pytest.raises(DriftConfigError) as caught:
        MonitorConfig.from_config({"source": "s", "field": "f"})
    assert (caught.value.monitor, caught.value.key) == ("<unnamed>", "name")
    with pytest.raises(DriftConfigError) as caught:
        MonitorConfig.from_config({**BASE, "name": "has space"})
    assert caught.value.key == "name"


def test_not_a_mapping() -> None:
    with pytest.raises(DriftConfigError, match="expected a mapping"):
        MonitorConfig.from_config(["amount"])  # type: ignore[arg-type]


def test_a_feature_monitor_names_group_and_feature() -> None:
    config = MonitorConfig.from_config(
        {"name": "m", "source": "tx", "feature": "user.spend.amount_mean_1h"}
    )
    assert (config.field, config.feature_group, config.feature_name) == (
        None,
        "user.spend",
        "amount_mean_1h",
    )
    assert config.watched == "user.spend.amount_mean_1h" and config.max_entities_per_batch == 64
    plain = MonitorConfig.from_config(BASE)
    assert (plain.watched, plain.feature_group, plain.feature_name) == ("amount", None, None)
