"""``driftline features get``: read features as model-serving code would, and show them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from driftline.errors import redact
from driftline.features.definitions import FeatureGroup, newest_versions
from driftline.sinks.redis_client import REDIS_ERRORS
from driftline.streams.clients import feature_store, redis_client
from driftline.streams.errors import ConfigError, DriftlineError
from driftline.streams.settings import Settings
from driftline.streams.sources import build_sources


def pick_group(
    settings: Settings, origin: str, name: str | None, version: int | None = None
) -> FeatureGroup:
    """The group ``--group`` names (default: the only one), at ``--version`` (default: the
    newest configured version of that name)."""
    groups = build_sources(settings, origin).all_groups()
    if not groups:
        raise ConfigError(f"{origin}: no feature_groups are defined")
    newest = newest_versions(groups)
    if name is None:
        if len(newest) > 1:
            raise ConfigError(
                f"{origin}: several feature groups ({', '.join(newest)}); choose one with --group"
            )
        name = next(iter(newest))
    if name not in newest:
        raise ConfigError(f"{origin}: no feature group {name!r} (defined: {', '.join(newest)})")
    if version is None:
        return newest[name]
    for group in groups:
        if group.name == name and group.version == version:
            return group
    configured = ", ".join(
        str(g.version) for g in sorted(groups, key=lambda g: g.version) if g.name == name
    )
    raise ConfigError(
        f"{origin}: feature group {name!r} has no version {version} in the config "
        f"(configured: {configured})"
    )


def _fmt_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


async def _read(
    settings: Settings, group: FeatureGroup, entities: list[str], as_of_ms: int | None
) -> list[Any]:
    client = redis_client(settings)
    try:
        return await feature_store(settings, client).get(group, entities, as_of_ms=as_of_ms)
    except REDIS_ERRORS as exc:
        raise DriftlineError(
            f"cannot read from Redis at {redact(settings.redis.url)}: {exc}"
        ) from None
    finally:
        await client.aclose()


def get_features(
    settings: Settings,
    origin: str,
    group_name: str | None,
    entities: list[str],
    as_of_ms: int | None,
    as_json: bool,
    version: int | None = None,
) -> str:
    group = pick_group(settings, origin, group_name, version)
    vectors = asyncio.run(_read(settings, group, entities, as_of_ms))
    if as_json:
        return "\n".join(
            orjson.dumps(
                {
                    "entity": entity,
                    "group": group.name,
                    "version": group.version,
                    **vector.as_dict(),
                    "age_ms": None
                    if vector.newest_event_ms is None
                    else vector.as_of_ms - vector.newest_event_ms,
                }
            ).decode()
            for entity, vector in zip(entities, vectors, strict=True)
        )
    lines: list[str] = []
    for entity, vector in zip(entities, vectors, strict=True):
        if vector.newest_event_ms is None:
            freshness = "no events stored (unknown entity, or all windows expired)"
        else:
            age_s = (vector.as_of_ms - vector.newest_event_ms) / 1000
            freshness = f"newest event {_fmt_time(vector.newest_event_ms)} ({age_s:.1f}s before)"
        lines.append(
            f"{group.name} v{group.version} / {entity}  "
            f"as of {_fmt_time(vector.as_of_ms)}; {freshness}"
        )
        width = max(len(name) for name in vector.values)
        for name, value in vector.values.items():
            lines.append(f"  {name:<{width}}  {_fmt_value(value)}")
    return "\n".join(lines)
