"""The feature registry's records: what a worker writes for each group version, read back.

Pure: the Redis hash ``{prefix}:registry:{group}`` is read by the adapters
and handed here as a mapping of fields.  Fields, one per version ``N``:

* ``vN``: JSON ``{"fingerprint", "definition", "first_deployed_ms", "lineage"}``;
* ``vN@<contract fingerprint>``: when a contract was first seen with it (ms);
* ``vN:last_write_ms``: when a worker last wrote features of it (ms);
* ``vN:backfill``: JSON progress of ``driftline backfill`` (:class:`BackfillProgress`);
* ``active``: the version serving reads (``driftline registry activate``); absent
  until a version is activated, and then the lowest configured version is served.

A record written with ``"marks": true`` (every record since backfills exist)
promises that each worker writing the version records, per source partition
(and shard), the offset from which it writes it live: the seam a backfill
hands over at (:mod:`driftline.streams.backfill`).

:func:`group_from_definition` rebuilds the :class:`FeatureGroup` a worker
recorded, so a reader (``driftline serve``, :class:`driftline.FeatureClient`)
serves a version without the worker's config.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from driftline.features.definitions import FeatureGroup, Window
from driftline.features.exceptions import FeatureDefinitionError


@dataclass(frozen=True, slots=True)
class DeployedVersion:
    """One ``v{version}`` field of ``{prefix}:registry:{group}``: what a worker recorded."""

    group: str
    version: int
    fingerprint: str
    definition: Mapping[str, Any]
    first_deployed_ms: int | None
    #: topic and contract (``SchemaInfo.as_dict()``) at the first deployment, if recorded
    lineage: Mapping[str, Any] = field(default_factory=dict)
    #: (contract fingerprint, first seen ms) of every contract deployed with it, by time
    contracts: tuple[tuple[str, int], ...] = ()
    #: when a worker last wrote features of this version (about once a minute while it does)
    last_write_ms: int | None = None
    #: the record promises live-start marks (see the module docstring): it can be backfilled
    marked: bool = False
    #: the registry's ``active`` field names this version
    active: bool = False
    #: the progress of a backfill of this version, if one ran
    backfill: BackfillProgress | None = None
    #: when it was first the served version (``v{N}:served_ms``; written by an activation)
    served_ms: int | None = None


#: The registry hash's field naming the version serving reads.
ACTIVE_FIELD = "active"


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """``v{N}:backfill`` of the registry: where a backfill of a version stands.

    ``state`` is ``running`` until every event up to the live marks is applied,
    then ``done`` (the version is *ready*).  ``events`` counts the events
    applied so far, of ``total`` (``None`` until counted).  ``log_from`` is the
    run's plan, kept so a resumed run reads the same events in the same order:
    per source partition, the first offset read from the offline log; the
    records below it are read from the topic, from ``topic_from`` (the oldest
    retained record when the first run read it).
    """

    state: Literal["running", "done"]
    events: int
    total: int | None
    from_ms: int
    started_ms: int
    updated_ms: int
    log_from: Mapping[int, int] | None = None
    topic_from: Mapping[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        """What ``driftline registry`` and serve show (the plan is the backfill's own)."""
        return {
            "state": self.state,
            "events": self.events,
            "total": self.total,
            "from_ms": self.from_ms,
            "started_ms": self.started_ms,
            "updated_ms": self.updated_ms,
        }

    def to_record(self) -> bytes:
        """The registry field's value (with the plan)."""
        doc = self.as_dict()
        for name, plan in (("log_from", self.log_from), ("topic_from", self.topic_from)):
            if plan is not None:
                doc[name] = {str(p): o for p, o in sorted(plan.items())}
        return orjson.dumps(doc)

    @classmethod
    def parse(cls, raw: bytes | str) -> BackfillProgress | None:
        """The record read back (``None`` if it is not one)."""
        try:
            doc = orjson.loads(raw)
            state = doc["state"]
            if state not in ("running", "done"):
                return None
            total = doc.get("total")
            plans = [doc.get(name) for name in ("log_from", "topic_from")]
            return cls(
                state,
                int(doc["events"]),
                None if total is None else int(total),
                int(doc["from_ms"]),
                int(doc["started_ms"]),
                int(doc["updated_ms"]),
                *(None if x is None else {int(p): int(o) for p, o in x.items()} for x in plans),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


def backfill_field(version: int) -> str:
    return f"v{version}:backfill"


def served_field(version: int) -> str:
    """When the version was first served: a served version kept written stays complete."""
    return f"v{version}:served_ms"


def version_record(
    group: FeatureGroup, now_ms: int, lineage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``v{version}`` record a worker writes on the first deployment of ``group``."""
    doc: dict[str, Any] = {
        "fingerprint": group.fingerprint(),
        "definition": group.canonical(),
        "first_deployed_ms": now_ms,
        "marks": True,
    }
    if lineage is not None:
        doc["lineage"] = dict(lineage)
    return doc


def parse_records(
    group: str, fields: Mapping[bytes | str, bytes | str]
) -> tuple[list[DeployedVersion], list[str]]:
    """The versions recorded in one registry hash, and a problem per unreadable field.

    An unreadable field is reported, not fatal: the registry is an
    inventory, and one corrupt record must not hide the others.
    """
    out: list[DeployedVersion] = []
    problems: list[str] = []
    seen: dict[int, list[tuple[str, int]]] = {}
    written: dict[int, int] = {}
    backfills: dict[int, BackfillProgress] = {}
    served: dict[int, int] = {}
    active: int | None = None
    for raw_name, raw_value in fields.items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        where = f"{group} {name}"
        if name == ACTIVE_FIELD:
            active = _ms(raw_value)
            if active is None:
                problems.append(f"{where}: expected a version number")
            continue
        backfill = re.fullmatch(r"v([1-9][0-9]*):backfill", name)
        if backfill:
            progress = BackfillProgress.parse(raw_value)
            if progress is None:
                problems.append(f"{where}: expected a backfill progress record")
            else:
                backfills[int(backfill[1])] = progress
            continue
        touched = re.fullmatch(r"v([1-9][0-9]*):last_write_ms", name)
        served_at = re.fullmatch(r"v([1-9][0-9]*):served_ms", name)
        if served_at:
            ms = _ms(raw_value)
            if ms is None:
                problems.append(f"{where}: expected a time in ms")
            else:
                served[int(served_at[1])] = ms
            continue
        contract = re.fullmatch(r"v([1-9][0-9]*)@(.+)", name)
        if touched or contract:
            ms = _ms(raw_value)
            if ms is None:
                problems.append(f"{where}: expected a time in ms")
            elif touched:
                written[int(touched[1])] = ms
            elif contract:
                seen.setdefault(int(contract[1]), []).append((contract[2], ms))
            continue
        if not re.fullmatch(r"v[1-9][0-9]*", name):
            problems.append(f"{where}: not a version field (expected v<version>)")
            continue
        try:
            record = orjson.loads(raw_value)
        except orjson.JSONDecodeError as exc:
            problems.append(f"{where}: not JSON ({exc})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
            problems.append(f"{where}: expected an object with a fingerprint")
            continue
        deployed = record.get("first_deployed_ms")
        definition = record.get("definition")
        lineage = record.get("lineage")
        out.append(
            DeployedVersion(
                group=group,
                version=int(name[1:]),
                fingerprint=record["fingerprint"],
                definition=definition if isinstance(definition, dict) else {},
                first_deployed_ms=deployed
                if isinstance(deployed, int) and not isinstance(deployed, bool)
                else None,
                lineage=lineage if isinstance(lineage, dict) else {},
                marked=record.get("marks") is True,
            )
        )
    out = [
        dataclasses.replace(
            d,
            contracts=tuple(sorted(seen.get(d.version, ()), key=_by_time)),
            last_write_ms=written.get(d.version),
            active=d.version == active,
            backfill=backfills.get(d.version),
            served_ms=served.get(d.version),
        )
        for d in out
    ]
    return sorted(out, key=lambda d: d.version), problems


def _ms(raw: bytes | str) -> int | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return int(text) if text.isdigit() else None


def _by_time(contract: tuple[str, int]) -> tuple[int, str]:
    return contract[1], contract[0]


def group_from_definition(definition: Mapping[str, Any]) -> FeatureGroup | None:
    """Rebuild a group from the canonical definition a worker recorded (``None`` if unusable).

    The inverse of :meth:`FeatureGroup.canonical` (description, owner and tags
    are not recorded, so they are empty).  Used to list the features of a
    retired version that the config no longer describes.
    """
    try:
        return FeatureGroup(
            name=definition["name"],
            version=definition["version"],
            source=definition["source"],
            entity_key=definition["entity_key"],
            values={f: tuple(aggs) for f, aggs in definition["values"]},
            distinct=tuple(definition["distinct"]),
            last=tuple(definition["last"]),
            windows=tuple(Window(n, length, res) for n, length, res in definition["windows"]),
            allowed_lateness_ms=definition["allowed_lateness_ms"],
            future_tolerance_ms=definition["future_tolerance_ms"],
        )
    except (KeyError, TypeError, ValueError, FeatureDefinitionError):
        return None
