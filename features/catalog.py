"""The feature registry as people and the API read it: entries with lineage.

Two inputs meet here.  The **config** says what is *configured*: the groups
a worker started with this file would compute (a :class:`Catalog`; one name
may be configured with several versions, e.g. v1 served while v2 is
backfilled).  **Redis** says what was *deployed*: at start-up each worker
records every group version it computes in ``{prefix}:registry:{group}``
(field ``v{version}``, JSON with the definition's fingerprint, its canonical
definition and the first deployment time; read as
:class:`~driftline.features.registry.DeployedVersion`), and the hash's
``active`` field names the version serving reads (``driftline registry
activate``).  Each version gets one status (:func:`version_status`)::

    in Redis, not in the config                          -> retired (its keys expire by TTL)
    the version serving reads (:func:`served_version`)   -> active
    a backfill of it is running                          -> backfilling
    its backfill is done, or it was first deployed at
      least the group's TTL ago (live events alone have
      filled every window)                               -> ready
    otherwise (not deployed yet, or deployed recently)   -> warming

The served version is the one the ``active`` field names when it is
configured, else the *lowest* configured version: adding v2 to the config
changes nothing served until someone activates it.

Each entry carries its **lineage**, the chain a feature value went through::

    topic ──► schema (fingerprint) ──► fields ──► group version ──► Redis key space

    transactions ──► transactions.schema.json (sha256:3f0c…) ──► amount, category
                 ──► user_spend v2 ──► driftline:fg:user_spend:v2:*

so "which contract version fed this model input?" and "which keys hold it?"
have one answer.  A retired version's definition, topic and contract come
from its Redis record (what the first worker that deployed it wrote).  Every
contract fingerprint a version was deployed with is recorded as well
(``v{version}@{fingerprint}`` = first time seen) and listed as
``contracts_seen``: a contract may change under one group version when the
change does not touch the group's fields.  Records written before lineage was
recorded have no contract: their schema is unknown (``null``) and their topic
the one their source has in the *current* config, if it still exists.

All of it is pure: the catalog is built from the config by
:func:`driftline.streams.serve.registry.load_catalog`, the records are read
from Redis by :func:`driftline.sinks.registry_store.read_deployed`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from driftline.features.definitions import FeatureGroup
from driftline.features.registry import BackfillProgress, DeployedVersion, group_from_definition

Status = Literal["active", "ready", "backfilling", "warming", "retired"]

#: JSON type of each aggregate as served: counts are integers and never null,
#: a sum of no values is 0.0, the others are null over an empty window.
_AGGREGATE_TYPES: Mapping[str, str] = {
    "count": "integer",
    "sum": "number",
    "mean": "number|null",
    "min": "number|null",
    "max": "number|null",
    "std": "number|null",
    "var": "number|null",
}

# ------------------------------------------------------------------ records


def schema_from_record(lineage: Mapping[str, Any]) -> SchemaInfo | None:
    """The contract a record's lineage names (``None`` when not recorded or unreadable)."""
    schema = lineage.get("schema")
    if not isinstance(schema, dict) or not isinstance(schema.get("file"), str):
        return None
    fingerprint = schema.get("fingerprint")
    ids = schema.get("schema_ids")
    return SchemaInfo(
        file=schema["file"],
        encoding=str(schema.get("encoding", "")),
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        schema_ids={int(k): str(v) for k, v in ids.items() if str(k).isdigit()}
        if isinstance(ids, dict)
        else {},
    )


# ------------------------------------------------------------------ sources


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """The contract of a source as lineage shows it (file name, not the server's path)."""

    file: str
    encoding: str
    #: ``sha256:…`` of the contract file's bytes; for confluent-avro, of the
    #: source's own ``schema`` file when it is one of the mapped ids, else None
    fingerprint: str | None
    #: confluent-avro: schema id -> fingerprint of each locally mapped contract
    schema_ids: Mapping[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "encoding": self.encoding,
            "fingerprint": self.fingerprint,
            "schema_ids": {str(k): v for k, v in sorted(self.schema_ids.items())},
        }


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What lineage needs of one configured source."""

    name: str
    topic: str
    entity_key: str
    event_time: str | None
    schema: SchemaInfo
    #: declared type of each top-level contract field ("number", "string|null", ...)
    field_types: Mapping[str, str]

    def lineage_record(self) -> dict[str, Any]:
        """What a worker records with a group version it deploys (read by
        :func:`schema_from_record` and :func:`build_registry`)."""
        return {"topic": self.topic, "schema": self.schema.as_dict()}


@dataclass(frozen=True, slots=True)
class Catalog:
    """The config's side of the registry: compiled groups and source facts.

    ``groups`` holds every configured version (one name may have several),
    ordered by name, then version.
    """

    prefix: str
    groups: tuple[FeatureGroup, ...]
    sources: Mapping[str, SourceInfo]

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.groups, key=lambda g: (g.name, g.version)))
        object.__setattr__(self, "groups", ordered)

    def names(self) -> list[str]:
        """The configured group names, once each, sorted."""
        return list(dict.fromkeys(g.name for g in self.groups))

    def versions(self, name: str) -> dict[int, FeatureGroup]:
        """The configured versions of ``name``, ascending (empty: not configured)."""
        return {g.version: g for g in self.groups if g.name == name}

    def group(self, name: str, version: int) -> FeatureGroup | None:
        return self.versions(name).get(version)


def served_version(configured: Iterable[int], active: int | None) -> int | None:
    """The version serving reads: ``active`` (the registry's ``active`` field) when it is
    configured, else the lowest configured version; ``None`` when none is configured."""
    versions = sorted(configured)
    if not versions:
        return None
    return active if active in versions else versions[0]


def count_text(n: int) -> str:
    """``950``, ``12.3k``, ``1.2M``: an event count for people."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def backfill_text(progress: BackfillProgress) -> str:
    """``running: 1.2M of 3.4M events`` (``done: ...`` once finished)."""
    of = f" of {count_text(progress.total)}" if progress.total is not None else ""
    return f"{progress.state}: {count_text(progress.events)}{of} events"


def version_status(
    group: FeatureGroup,
    record: DeployedVersion | None,
    *,
    served: bool,
    now_ms: int | None,
) -> tuple[Status, int | None]:
    """The status of a configured version, and when it is ready by itself (warming only).

    ``served``: it is the version serving reads (:func:`served_version`).  Without
    ``now_ms`` the age of a deployment is unknown: only a finished backfill makes
    a version ready.
    """
    if served:
        return "active", None
    backfill = record.backfill if record is not None else None
    if backfill is not None and backfill.state == "running":
        return "backfilling", None
    if backfill is not None and backfill.state == "done":
        return "ready", None
    if record is not None and record.served_ms is not None:
        return "ready", None  # served before, written since: switching back is instant
    deployed = record.first_deployed_ms if record is not None else None
    if deployed is None:
        return "warming", None
    ready_at = deployed + group.ttl_ms
    if now_ms is not None and now_ms >= ready_at:
        return "ready", None
    return "warming", ready_at


# ------------------------------------------------------------------ entries


@dataclass(frozen=True, slots=True)
class FeatureInfo:
    """One served feature: how it is computed and from which source field."""

    name: str
    kind: Literal["value", "distinct", "last"]
    #: JSON type of the served value ("integer", "number|null", "string|null", ...)
    value_type: str
    #: count, sum, mean, min, max, std, var, distinct_count, or last
    aggregation: str
    window: str | None
    window_ms: int | None
    source_field: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "value_type": self.value_type,
            "aggregation": self.aggregation,
            "window": self.window,
            "window_ms": self.window_ms,
            "source_field": self.source_field,
        }


def describe_features(
    group: FeatureGroup, types: Mapping[str, str] | None = None
) -> tuple[FeatureInfo, ...]:
    """The features of ``group`` in ``feature_names()`` order, typed.

    ``types`` (the contract's field types) gives a ``last`` feature its type:
    the source field's type, nullable (no value yet).  Without it, ``scalar``.
    """
    out: list[FeatureInfo] = []
    for spec in group.layout.features:
        if spec.kind == "last":
            declared = (types or {}).get(spec.field, "scalar")
            value_type = declared if "null" in declared.split("|") else f"{declared}|null"
            out.append(FeatureInfo(spec.name, "last", value_type, "last", None, None, spec.field))
            continue
        assert spec.window is not None
        if spec.kind == "distinct":
            agg, value_type = "distinct_count", "integer"
        else:
            agg, value_type = spec.aggregation, _AGGREGATE_TYPES[spec.aggregation]
        out.append(
            FeatureInfo(
                spec.name,
                spec.kind,
                value_type,
                agg,
                spec.window.name,
                spec.window.length_ms,
                spec.field,
            )
        )
    return tuple(out)


def key_space(prefix: str, group: str, version: int) -> str:
    """The Redis key pattern of a group version (``SCAN MATCH`` syntax)."""
    return f"{prefix}:fg:{group}:v{version}:*"


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One feature group version, active or retired, with its lineage."""

    name: str
    version: int
    status: Status
    fingerprint: str
    source: str
    entity_key: str
    description: str
    owner: str
    tags: tuple[str, ...]
    features: tuple[FeatureInfo, ...]
    #: from the Redis record; None: no worker has deployed this version yet
    first_deployed_ms: int | None
    #: None for a retired version whose source is no longer configured
    topic: str | None
    #: None for a retired version recorded without its contract
    schema: SchemaInfo | None
    event_time: str | None
    key_space: str
    warnings: tuple[str, ...] = ()
    #: (contract fingerprint, first seen ms) of every contract deployed with this version
    contracts_seen: tuple[tuple[str, int], ...] = ()
    #: last recorded write of features (None: never recorded)
    last_write_ms: int | None = None
    #: when the version's keys are all expired: last write + the group's TTL
    keys_expire_ms: int | None = None
    #: serving reads this version (status "active")
    active: bool = False
    #: the progress of ``driftline backfill`` of this version, if one ran
    backfill: BackfillProgress | None = None
    #: warming: when live events alone will have filled every window
    #: (first deployment + the group's TTL); None when not deployed yet
    ready_by_ms: int | None = None
    #: why the version has its status, in a sentence
    status_detail: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        """Source fields the features read, in first-use order."""
        return tuple(dict.fromkeys(f.source_field for f in self.features))

    def lineage(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "schema": None if self.schema is None else self.schema.as_dict(),
            "fields": list(self.fields),
            "entity_key": self.entity_key,
            "event_time": self.event_time,
            "feature_group": {
                "name": self.name,
                "version": self.version,
                "fingerprint": self.fingerprint,
            },
            "redis_key_space": self.key_space,
            "path": lineage_text(self),
            "contracts_seen": [
                {"fingerprint": fp, "first_seen_ms": ms} for fp, ms in self.contracts_seen
            ],
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "fingerprint": self.fingerprint,
            "description": self.description,
            "owner": self.owner,
            "tags": list(self.tags),
            "source": self.source,
            "topic": self.topic,
            "entity_key": self.entity_key,
            "first_deployed_ms": self.first_deployed_ms,
            "last_write_ms": self.last_write_ms,
            "keys_expire_ms": self.keys_expire_ms,
            "active": self.active,
            "status_detail": self.status_detail,
            "ready_by_ms": self.ready_by_ms,
            "backfill": None if self.backfill is None else self.backfill.as_dict(),
            "features": [f.as_dict() for f in self.features],
            "lineage": self.lineage(),
            "warnings": list(self.warnings),
        }


def lineage_text(entry: RegistryEntry) -> str:
    """``topic → schema (fingerprint) → fields → group vN → key space`` on one line."""
    schema = "schema unknown"
    if entry.schema is not None:
        fp = entry.schema.fingerprint
        schema = entry.schema.file + (f" ({fp[:19]})" if fp else "")
    return " → ".join(
        [
            entry.topic or f"(source {entry.source} not configured)",
            schema,
            ", ".join(entry.fields) or "-",
            f"{entry.name} v{entry.version}",
            entry.key_space,
        ]
    )


def build_registry(
    catalog: Catalog, deployed: Iterable[DeployedVersion], now_ms: int | None = None
) -> list[RegistryEntry]:
    """Entries for every configured version and every recorded one; by name, newest first.

    A retired version is listed until its keys have expired (``keys_expire_ms``
    before ``now_ms``); one never recorded as written stays listed.  Statuses:
    :func:`version_status` (a configured version) and the module docstring.
    """
    listed = list(deployed)
    records: dict[tuple[str, int], DeployedVersion] = {(d.group, d.version): d for d in listed}
    activated = {d.group: d.version for d in listed if d.active}
    entries: list[RegistryEntry] = []
    for name in catalog.names():
        versions = catalog.versions(name)
        serving = served_version(versions, activated.get(name))
        for group in versions.values():
            record = records.pop((group.name, group.version), None)
            entries.append(_configured(catalog, group, record, name in activated, serving, now_ms))
    for record in records.values():
        entry = _retired(catalog, record)
        expires = entry.keys_expire_ms
        if now_ms is not None and expires is not None and expires < now_ms:
            continue  # its key space is gone: nothing left to describe
        if record.active:
            entry = dataclasses.replace(
                entry,
                warnings=(
                    *entry.warnings,
                    f"the registry's active field names v{record.version}, which is not "
                    "configured: serving reads "
                    + (
                        f"v{served_version(catalog.versions(record.group), None)}"
                        if catalog.versions(record.group)
                        else "nothing"
                    )
                    + " (the lowest configured version)",
                ),
            )
        entries.append(entry)
    return sorted(entries, key=lambda e: (e.name, -e.version))


def _configured(
    catalog: Catalog,
    group: FeatureGroup,
    record: DeployedVersion | None,
    activated: bool,
    serving: int | None,
    now_ms: int | None,
) -> RegistryEntry:
    src = catalog.sources[group.source]
    warnings: list[str] = []
    if record is None:
        warnings.append("not deployed yet: no worker has recorded this version in Redis")
    elif record.fingerprint != group.fingerprint():
        warnings.append(
            f"version {group.version} is deployed with a different definition "
            f"(fingerprint {record.fingerprint[:12]}, config {group.fingerprint()[:12]}): "
            "a worker refuses this config; bump 'version'"
        )
    served = group.version == serving
    status, ready_by = version_status(group, record, served=served, now_ms=now_ms)
    backfill = record.backfill if record is not None else None
    return RegistryEntry(
        name=group.name,
        version=group.version,
        status=status,
        fingerprint=group.fingerprint(),
        source=group.source,
        entity_key=group.entity_key,
        description=group.description,
        owner=group.owner,
        tags=group.tags,
        features=describe_features(group, src.field_types),
        first_deployed_ms=None if record is None else record.first_deployed_ms,
        topic=src.topic,
        schema=src.schema,
        event_time=src.event_time,
        key_space=key_space(catalog.prefix, group.name, group.version),
        warnings=tuple(warnings),
        contracts_seen=() if record is None else record.contracts,
        last_write_ms=None if record is None else record.last_write_ms,
        keys_expire_ms=_expiry(record, group),
        active=served,
        backfill=backfill,
        ready_by_ms=ready_by,
        status_detail=_detail(status, group, record, activated, ready_by),
    )


def _detail(
    status: Status,
    group: FeatureGroup,
    record: DeployedVersion | None,
    activated: bool,
    ready_by: int | None,
) -> str:
    if status == "active":
        if activated:
            return "served: the registry's active field names it"
        return "served: no configured version is activated, so the lowest configured one is"
    if status == "backfilling":
        assert record is not None and record.backfill is not None
        return f"backfill {backfill_text(record.backfill)}"
    if status == "ready":
        if record is not None and record.backfill is not None:
            return f"ready to activate: backfill {backfill_text(record.backfill)}"
        if record is not None and record.served_ms is not None:
            return (
                f"ready to activate: served from {format_ms(record.served_ms)} on and "
                "written since, so switching back to it is instant"
            )
        return (
            "ready to activate: deployed longer than the group's TTL ago, so live events "
            "alone have filled every window"
        )
    if status == "warming":
        if ready_by is None:
            return (
                "warming: not deployed yet (no worker computes it); once deployed it is ready "
                "by itself after the group's TTL, or sooner with driftline backfill"
            )
        return (
            f"warming: ready by itself at {format_ms(ready_by)} (first deployment + the "
            f"group's TTL); run driftline backfill --group {group.name} "
            f"--version {group.version} to make it ready sooner"
        )
    return "retired: recorded in Redis, no longer in the config"


def format_ms(ms: int) -> str:
    """``2026-12-06 16:51:56Z``: a time for people, UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def _expiry(record: DeployedVersion | None, group: FeatureGroup | None) -> int | None:
    if record is None or record.last_write_ms is None or group is None:
        return None
    return record.last_write_ms + group.ttl_ms


def _retired(catalog: Catalog, record: DeployedVersion) -> RegistryEntry:
    old = group_from_definition(record.definition)
    source_name = str(record.definition.get("source", ""))
    src = catalog.sources.get(source_name)
    warnings = [] if old is not None else ["recorded definition is unreadable: features unknown"]
    topic = record.lineage.get("topic")
    return RegistryEntry(
        name=record.group,
        version=record.version,
        status="retired",
        fingerprint=record.fingerprint,
        source=source_name,
        entity_key=old.entity_key if old is not None else "",
        description="",
        owner="",
        tags=(),
        features=describe_features(old, src.field_types if src else None) if old else (),
        first_deployed_ms=record.first_deployed_ms,
        topic=str(topic) if topic else (src.topic if src is not None else None),
        schema=schema_from_record(record.lineage),
        event_time=src.event_time if src is not None else None,
        key_space=key_space(catalog.prefix, record.group, record.version),
        warnings=tuple(warnings),
        contracts_seen=record.contracts,
        last_write_ms=record.last_write_ms,
        keys_expire_ms=_expiry(record, old),
        backfill=record.backfill,
        status_detail=_detail("retired", old, record, False, None) if old else "retired",
    )
