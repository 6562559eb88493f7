"""A feature group from a plain mapping (YAML, JSON): every key checked, every error located.

:meth:`FeatureGroup.from_config <driftline.features.definitions.FeatureGroup.from_config>`
calls :func:`group_from_config`.  It checks the *shape* of the mapping (known
keys, types, durations, the window list) and raises a
:class:`~driftline.features.exceptions.FeatureDefinitionError` naming the group
and the key (``windows[2].resolution``); what the values *mean* together (known
aggregations, distinct feature names) is checked by the group itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from driftline.features.definitions import (
    AGGREGATIONS,
    DEFAULT_BUCKETS_PER_WINDOW,
    FeatureGroup,
    Window,
)
from driftline.features.durations import parse_duration
from driftline.features.exceptions import FeatureDefinitionError, did_you_mean

_CONFIG_KEYS = (
    "name",
    "version",
    "source",
    "entity_key",
    "values",
    "distinct",
    "last",
    "windows",
    "buckets_per_window",
    "allowed_lateness",
    "future_tolerance",
    "description",
    "owner",
    "tags",
)
_WINDOW_KEYS = ("window", "resolution")


def group_from_config(cls: type[FeatureGroup], config: Mapping[str, Any]) -> FeatureGroup:
    """Validate ``config`` key by key and build ``cls`` (a :class:`FeatureGroup`) from it."""
    if not isinstance(config, Mapping):
        raise FeatureDefinitionError(
            f"a feature group must be a mapping, got {type(config).__name__}"
        )
    raw_name = config.get("name")
    group = raw_name if isinstance(raw_name, str) and raw_name else None

    def fail(key: str, problem: str) -> FeatureDefinitionError:
        return FeatureDefinitionError(problem, group=group, key=key)

    for key in config:
        if key not in _CONFIG_KEYS:
            raise fail(str(key), "unknown key" + did_you_mean(str(key), _CONFIG_KEYS))

    def text(key: str, default: str | None = None) -> str:
        value = config.get(key, default)
        if value is None:
            raise fail(key, "required")
        if not isinstance(value, str):
            raise fail(key, f"must be a string, got {type(value).__name__}")
        return value

    def duration(key: str, default: str) -> int:
        value = config.get(key, default)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise fail(key, str(exc)) from None

    def names(key: str) -> tuple[str, ...]:
        value = config.get(key, [])
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise fail(key, f"must be a list of field names, got {type(value).__name__}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise fail(f"{key}[{i}]", f"must be a field name, got {item!r}")
        return tuple(value)

    def integer(key: str, default: int, minimum: int) -> int:
        value = config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    name = text("name")
    version = integer("version", 1, 1)
    source = text("source")
    entity_key = text("entity_key")

    raw_values = config.get("values", {})
    if not isinstance(raw_values, Mapping):
        raise fail(
            "values", f"must map field names to aggregations, got {type(raw_values).__name__}"
        )
    values: dict[str, tuple[str, ...]] = {}
    for fname, aggs in raw_values.items():
        if not isinstance(fname, str):
            raise fail("values", f"field names must be strings, got {fname!r}")
        if isinstance(aggs, str) or not isinstance(aggs, list | tuple):
            raise fail(
                f"values.{fname}",
                f"must be a list of aggregations from {', '.join(AGGREGATIONS)}, got {aggs!r}",
            )
        for i, agg in enumerate(aggs):
            if not isinstance(agg, str):
                raise fail(f"values.{fname}[{i}]", f"must be an aggregation name, got {agg!r}")
        values[fname] = tuple(aggs)

    buckets = integer("buckets_per_window", DEFAULT_BUCKETS_PER_WINDOW, 1)
    raw_windows = config.get("windows")
    if raw_windows is None:
        raise fail("windows", "required: a list such as ['1m', '5m', '1h', '24h']")
    if isinstance(raw_windows, str) or not isinstance(raw_windows, list | tuple):
        raise fail("windows", f"must be a list, got {type(raw_windows).__name__}")
    windows = []
    for i, spec in enumerate(raw_windows):
        key = f"windows[{i}]"
        resolution: str | None = None
        if isinstance(spec, Mapping):
            for k in spec:
                if k not in _WINDOW_KEYS:
                    raise fail(f"{key}.{k}", "unknown key" + did_you_mean(str(k), _WINDOW_KEYS))
            if "window" not in spec:
                raise fail(f"{key}.window", "required")
            length_text, resolution = spec["window"], spec.get("resolution")
            if resolution is not None and not isinstance(resolution, str):
                raise fail(f"{key}.resolution", f"must be a duration string, got {resolution!r}")
        else:
            length_text = spec
        if not isinstance(length_text, str):
            raise fail(key, f"must be a duration string such as '5m', got {length_text!r}")
        try:
            windows.append(
                Window.parse(length_text, resolution=resolution, buckets_per_window=buckets)
            )
        except FeatureDefinitionError as exc:
            raise exc.within(group, key) from None

    return cls(
        name=name,
        version=version,
        source=source,
        entity_key=entity_key,
        values=values,
        distinct=names("distinct"),
        last=names("last"),
        windows=tuple(windows),
        allowed_lateness_ms=duration("allowed_lateness", "30s"),
        future_tolerance_ms=duration("future_tolerance", "5m"),
        description=text("description", ""),
        owner=text("owner", ""),
        tags=names("tags"),
    )
