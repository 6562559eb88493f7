"""The typed bodies of ``driftline serve``: what it accepts and answers.

The OpenAPI document (``GET /openapi.json``) is generated from these models
by FastAPI.  Requests are validated against them; answers are validated on
their way out (the registry, the probes) or checked against the served
document by the end-to-end tests (the feature answers, encoded by orjson for
speed: see :mod:`.app`), so the document cannot say one thing while the
server sends another.  Models are
closed (``additionalProperties: false``): a client generated from the
document may rely on the fields it names and on no others.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

#: Largest accepted ``as_of``: bucket ids must stay exact as doubles (features.codec).
MAX_AS_OF_MS = 2**53 - 1


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _entity_key(value: Any) -> str:
    """A batch entity: a non-empty string, or an integer (served as its decimal string)."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError(f"must be a non-empty string or an integer, got {value!r}")
    return str(value)


EntityKey = Annotated[
    str,
    BeforeValidator(_entity_key),
    WithJsonSchema({"type": ["string", "integer"], "minLength": 1}),
]
FeatureValue = Annotated[
    int | float | str | bool | None,
    Field(
        description="Counts are integers; sums 0.0 and other aggregates null when the window "
        "is empty; last values have the source field's type."
    ),
]
Freshness = Annotated[
    Literal["fresh", "stale", "empty"],
    Field(
        description="Windowed: fresh if the window holds a value of the source field, else "
        "empty. last: empty if none, stale if older than the group's longest window, "
        "else fresh."
    ),
]
EpochMs = Annotated[int, Field(ge=0, le=MAX_AS_OF_MS)]


# ------------------------------------------------------------------ features


class EntityFeatures(_Closed):
    """The features of one entity (one result of a batch)."""

    entity: str
    newest_event_ms: int | None = Field(
        description="Event time of the entity's newest event; null when none is stored."
    )
    features: dict[str, FeatureValue] = Field(
        description="Requested features by name, in request order (default: all)."
    )
    freshness: dict[str, Freshness]


class FeatureVector(EntityFeatures):
    """``GET /v1/features/{group}/{entity}``: one entity's features."""

    group: str
    version: int = Field(ge=1)
    as_of_ms: EpochMs


class BatchRequest(_Closed):
    """``POST /v1/features/{group}:batch``: which entities and features, as of when."""

    entities: list[EntityKey] = Field(
        min_length=1,
        description="Entity keys (strings, or integers read as their decimal string).",
    )
    features: list[str] | None = Field(
        default=None, description="Feature names; omitted or null: all features."
    )
    windows: list[str] | None = Field(
        default=None,
        description="Window names (e.g. 5m): only features over these windows; with "
        "features, both must hold.",
    )
    as_of_ms: EpochMs | None = Field(
        default=None, description="Read as of this epoch ms; default: now."
    )
    version: int | None = Field(
        default=None,
        ge=1,
        description="Read this configured version of the group; default: the active one "
        "(driftline registry activate; else the lowest configured version).",
    )


class BatchResponse(_Closed):
    """One result per requested entity, in request order."""

    group: str
    version: int = Field(ge=1)
    as_of_ms: EpochMs
    results: list[EntityFeatures]


class Error(_Closed):
    """Every error answer: a message for people and the HTTP status again."""

    error: str
    status: int


# ------------------------------------------------------------------ registry


class FeatureInfo(_Closed):
    name: str
    kind: Literal["value", "distinct", "last"]
    value_type: str = Field(description='JSON type of the served value, e.g. "number|null".')
    aggregation: str
    window: str | None
    window_ms: int | None
    source_field: str


class SchemaInfo(_Closed):
    file: str
    encoding: str
    fingerprint: str | None
    schema_ids: dict[str, str]


class GroupVersion(_Closed):
    name: str
    version: int
    fingerprint: str


class ContractSeen(_Closed):
    fingerprint: str
    first_seen_ms: int


class Lineage(_Closed):
    """topic → schema (fingerprint) → fields → group version → Redis key space."""

    topic: str | None
    schema_: SchemaInfo | None = Field(alias="schema")
    fields: list[str]
    entity_key: str
    event_time: str | None
    feature_group: GroupVersion
    redis_key_space: str
    path: str
    contracts_seen: list[ContractSeen]


class BackfillProgress(_Closed):
    """Where ``driftline backfill`` of a version stands."""

    state: Literal["running", "done"]
    events: int = Field(description="Events applied so far.")
    total: int | None = Field(description="Events to apply in all; null until counted.")
    from_ms: int = Field(description="Event time the backfill starts from (epoch ms).")
    started_ms: int
    updated_ms: int = Field(description="When the progress was last recorded (epoch ms).")


class RegistryEntry(_Closed):
    name: str
    version: int = Field(ge=1)
    status: Literal["active", "ready", "backfilling", "warming", "retired"] = Field(
        description="active: the version serving reads (the registry's active field names it, "
        "or, when none is activated, the lowest configured version); ready: configured, its "
        "backfill is done or it was deployed at least the group's TTL ago; backfilling: a "
        "backfill is running; warming: configured, not ready yet; retired: recorded in Redis, "
        "no longer configured."
    )
    fingerprint: str
    description: str
    owner: str
    tags: list[str]
    source: str
    topic: str | None
    entity_key: str
    first_deployed_ms: int | None
    last_write_ms: int | None
    keys_expire_ms: int | None
    active: bool = Field(description="Serving reads this version (status active).")
    status_detail: str = Field(description="Why the version has its status, in a sentence.")
    ready_by_ms: int | None = Field(
        description="warming: when live events alone will have filled every window (first "
        "deployment + the group's TTL); driftline backfill makes it ready sooner."
    )
    backfill: BackfillProgress | None
    features: list[FeatureInfo]
    lineage: Lineage
    warnings: list[str]


class Registry(_Closed):
    """``GET /v1/registry``: feature group versions (configured and retired) with lineage."""

    groups: list[RegistryEntry]


# ------------------------------------------------------------------ probes


class Health(_Closed):
    status: Literal["ok"]


class Ready(_Closed):
    ready: bool
    redis: str
