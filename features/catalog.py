"""The feature registry as people and the API read it: entries with lineage.

Two inputs meet here.  The **config** says what is *active*: the groups a
worker started with this file would compute (a :class:`Catalog`).  **Redis**
says what was *deployed*: at start-up each worker records every group
version it computes in ``{prefix}:registry:{group}`` (field ``v{version}``,
JSON with the definition's fingerprint, its canonical definition and the
first deployment time; read as
:class:`~driftline.features.registry.DeployedVersion`).  So::

    in the config                      -> status "active" (deployed or not yet)
    in Redis, not in the config        -> status "retired" (its keys expire by TTL)

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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from driftline.features.definitions import FeatureGroup
from driftline.features.registry import DeployedVersion, group_from_definition

Status = Literal["active", "retired"]

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
    """The config's side of the registry: compiled groups and source facts."""

    prefix: str
    groups: Mapping[str, FeatureGroup]
    sources: Mapping[str, SourceInfo]


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
    """Entries for every configured group and every recorded version; by name, newest first.

    A retired version is listed until its keys have expired (``keys_expire_ms``
    before ``now_ms``); one never recorded as written stays listed.
    """
    records: dict[tuple[str, int], DeployedVersion] = {(d.group, d.version): d for d in deployed}
    entries: list[RegistryEntry] = []
    for group in catalog.groups.values():
        src = catalog.sources[group.source]
        record = records.pop((group.name, group.version), None)
        warnings: list[str] = []
        if record is None:
            warnings.append("not deployed yet: no worker has recorded this version in Redis")
        elif record.fingerprint != group.fingerprint():
            warnings.append(
                f"version {group.version} is deployed with a different definition "
                f"(fingerprint {record.fingerprint[:12]}, config {group.fingerprint()[:12]}): "
                "a worker refuses this config; bump 'version'"
            )
        entries.append(
            RegistryEntry(
                name=group.name,
                version=group.version,
                status="active",
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
            )
        )
    for record in records.values():
        entry = _retired(catalog, record)
        expires = entry.keys_expire_ms
        if now_ms is not None and expires is not None and expires < now_ms:
            continue  # its key space is gone: nothing left to describe
        entries.append(entry)
    return sorted(entries, key=lambda e: (e.name, -e.version))


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
    )
