"""The registry's inputs read by the programs: the config's catalog, Redis's records.

:func:`load_catalog` compiles the config's contracts and feature groups into
a :class:`~driftline.features.catalog.Catalog` (local files only);
with the lineage facts of every source
(:func:`~driftline.streams.sources.source_info`); ``driftline registry`` prints
:func:`format_table`; :class:`RegistryReader` serves ``GET /v1/registry``
from the catalog and the records in Redis
(:class:`~driftline.sinks.registry_store.RedisRegistryStore`), cached.  What an
entry says and how it is built is pure: :mod:`driftline.features.catalog`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from driftline.features.catalog import (
    Catalog,
    RegistryEntry,
    backfill_text,
    build_registry,
    lineage_text,
)
from driftline.features.registry import DeployedVersion
from driftline.streams.settings import Settings
from driftline.streams.sources import build_feature_groups, build_parsers, source_info

log = logging.getLogger(__name__)

#: How long :class:`RegistryReader` reuses what it read (one SCAN of the keyspace).
REGISTRY_CACHE_S = 30.0


def load_catalog(settings: Settings, origin: str) -> Catalog:
    """Compile contracts and feature groups (``ConfigError``/``SchemaError`` on mistakes)."""
    parsers = build_parsers(settings)
    by_source = build_feature_groups(settings, parsers, origin)
    groups = tuple(g for gs in by_source.values() for g in gs)
    return Catalog(settings.redis.key_prefix, groups, source_info(settings, parsers))


def format_table(entries: Sequence[RegistryEntry]) -> str:
    """A human-readable listing: one row per version, then its lineage and features."""
    if not entries:
        return "no feature groups (none configured, none recorded in Redis)"
    header = ("GROUP", "VERSION", "STATUS", "SOURCE", "FEATURES", "FIRST DEPLOYED", "FINGERPRINT")
    rows = [
        (
            e.name,
            str(e.version),
            e.status
            + (
                f" ({backfill_text(e.backfill)})"
                if e.status == "backfilling" and e.backfill
                else ""
            ),
            e.source,
            str(len(e.features)),
            _fmt_time(e.first_deployed_ms),
            e.fingerprint[:12],
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for e in entries:
        lines.append("")
        title = f"{e.name} v{e.version} ({e.status})"
        if e.description:
            title += f": {e.description}"
        lines.append(title)
        if e.owner or e.tags:
            lines.append(f"  owner {e.owner or '-'}; tags {', '.join(e.tags) or '-'}")
        lines.append(f"  status   {e.status_detail}")
        if e.backfill is not None:
            lines.append(
                f"  backfill {backfill_text(e.backfill)} (from {_fmt_time(e.backfill.from_ms)}; "
                f"started {_fmt_time(e.backfill.started_ms)}, updated "
                f"{_fmt_time(e.backfill.updated_ms)})"
            )
        lines.append(f"  lineage  {lineage_text(e)}")
        lines.append(f"  entity   {e.entity_key or '-'}")
        if e.last_write_ms is not None:
            lines.append(
                f"  written  {_fmt_time(e.last_write_ms)} (keys expire by "
                f"{_fmt_time(e.keys_expire_ms)} without writes)"
            )
        for w in e.warnings:
            lines.append(f"  warning  {w}")
        width = max((len(f.name) for f in e.features), default=0)
        for f in e.features:
            how = f"{f.aggregation} of {f.source_field}" + (f" over {f.window}" if f.window else "")
            lines.append(f"  {f.name:<{width}}  {f.value_type:<12}  {how}")
    return "\n".join(lines)


def _fmt_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


class DeployedRecords(Protocol):
    """Where the records are read: ``RedisRegistryStore`` (tests: ``MemoryRegistryStore``)."""

    async def deployed(
        self, names: Iterable[str] = (), *, scan: bool = True
    ) -> tuple[list[DeployedVersion], list[str]]: ...


class RegistryReader:
    """The registry as ``GET /v1/registry`` serves it: rebuilt at most every ``cache_s``.

    Rebuilding scans the keyspace (``RedisRegistryStore.deployed``), which is
    cheap per call but proportional to the number of keys: a dashboard polling
    the endpoint must not turn into a continuous SCAN.  Concurrent requests
    share one rebuild.  A failed read raises (serve answers 503) and is not
    cached.
    """

    def __init__(
        self,
        store: DeployedRecords,
        catalog: Catalog,
        *,
        cache_s: float = REGISTRY_CACHE_S,
        monotonic: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.cache_s = cache_s
        self._monotonic = monotonic
        self._now_ms = now_ms
        self._lock = asyncio.Lock()
        self._cached: tuple[float, list[dict[str, Any]]] | None = None

    async def entries(self) -> list[dict[str, Any]]:
        async with self._lock:
            now = self._monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_s:
                return self._cached[1]
            deployed, problems = await self.store.deployed(self.catalog.names())
            for problem in problems:
                log.warning("registry record skipped: %s", problem)
            built = build_registry(self.catalog, deployed, self._now_ms())
            entries = [e.as_dict() for e in built]
            self._cached = (now, entries)
            return entries
