"""Compile a config's sources from settings: contracts, feature groups, monitors, quality checks.

:func:`build_sources` is the one build sequence every program runs after
:func:`~driftline.streams.settings.load_settings` (``check-config``, the
worker, ``features get``, ``driftline dev``); no Faust here, so
``check-config`` compiles exactly what the worker would without starting it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from driftline.drift.config import MonitorConfig
from driftline.drift.exceptions import DriftConfigError
from driftline.drift.quality import QualityChecker
from driftline.features.catalog import SchemaInfo, SourceInfo
from driftline.features.definitions import FeatureGroup, group_refs
from driftline.features.exceptions import FeatureDefinitionError
from driftline.schemas import EventParser, build_parser
from driftline.schemas.fields import field_types, never_numeric
from driftline.schemas.registry import SchemaRegistryClient
from driftline.streams.errors import ConfigError
from driftline.streams.settings import Settings


@dataclass(frozen=True)
class Sources:
    """What a config compiles to, each by source name."""

    parsers: dict[str, EventParser]
    groups: dict[str, tuple[FeatureGroup, ...]]
    monitors: dict[str, tuple[MonitorConfig, ...]]
    quality: dict[str, QualityChecker]

    def all_groups(self) -> list[FeatureGroup]:
        """Every feature group, source by source."""
        return [group for groups in self.groups.values() for group in groups]


def build_sources(settings: Settings, origin: str) -> Sources:
    """Compile and cross-check everything ``settings`` declares, or raise naming ``origin``.

    Contracts first (a contract error is said before anything starts), then the
    feature groups against them, the monitors against both (a feature monitor
    reads a group), and the data-quality checks.  Raises :class:`ConfigError`
    or :class:`~driftline.schemas.SchemaError`.
    """
    parsers = build_parsers(settings)
    groups = build_feature_groups(settings, parsers, origin)
    monitors = build_monitors(settings, parsers, origin, groups)
    quality = build_quality(settings, parsers, origin)
    return Sources(parsers, groups, monitors, quality)


def build_parsers(settings: Settings) -> dict[str, EventParser]:
    """Compile every source's contract (also used by ``check-config``)."""
    registry = None
    reg = settings.schema_registry
    if reg.url:
        registry = SchemaRegistryClient(
            reg.url,
            username=reg.username,
            password=reg.password.get_secret_value() if reg.password else None,
            timeout_s=reg.timeout_s,
        )
    parsers: dict[str, EventParser] = {}
    for source in settings.sources:
        parsers[source.name] = build_parser(
            encoding=source.encoding,
            contract_path=source.schema_file,
            entity_key=source.entity_key,
            event_time_field=source.event_time,
            event_time_unit=source.event_time_unit,
            max_event_bytes=source.max_event_bytes,
            schema_ids=source.schema_ids,
            registry=registry,
        )
    return parsers


def build_feature_groups(
    settings: Settings, parsers: dict[str, EventParser], origin: str
) -> dict[str, tuple[FeatureGroup, ...]]:
    """Validate ``feature_groups`` against the sources and their contracts.

    Lateness and future tolerance belong to the source (one event-time
    watermark per partition decides them for every group), so a group inherits
    them.  One name may be listed with several versions (all from one source:
    :func:`_check_versions`); the worker computes each.  Raises
    :class:`ConfigError` naming the file, the group and the key.
    """
    sources = {s.name: s for s in settings.sources}
    by_source: dict[str, list[FeatureGroup]] = {name: [] for name in sources}
    seen: dict[str, FeatureGroup] = {}
    for index, raw in enumerate(settings.feature_groups):
        label = f"{origin}: feature_groups[{index}]"
        if isinstance(raw, dict) and raw.get("name"):
            label += f"({raw['name']})"
        if not isinstance(raw, dict):
            raise ConfigError(f"{label}: expected a mapping")
        for key in ("allowed_lateness", "future_tolerance"):
            if key in raw:
                raise ConfigError(
                    f"{label}.{key}: set it on the source; every group of a source shares it"
                )
        source = sources.get(str(raw.get("source")))
        if source is None:
            known = ", ".join(sorted(sources))
            raise ConfigError(
                f"{label}.source: unknown source {raw.get('source')!r} (known: {known})"
            )
        config = {
            **raw,
            "entity_key": raw.get("entity_key", source.entity_key),
            "allowed_lateness": source.allowed_lateness,
            "future_tolerance": source.future_tolerance,
        }
        try:
            group = FeatureGroup.from_config(config)
        except FeatureDefinitionError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
        _check_versions(label, group, seen)
        declared = _declared_fields(parsers[source.name])
        if declared:
            used = [group.entity_key, *group.values, *group.distinct, *group.last]
            unknown = sorted({f for f in used if f not in declared})
            if unknown:
                raise ConfigError(
                    f"{label}: field(s) {', '.join(unknown)} are not declared in the contract "
                    f"{source.schema_file.name} of source {source.name}"
                )
        types = declared_types(parsers[source.name])
        for fname in group.values:
            _check_numeric(
                f"{label}.values.{fname}",
                fname,
                types,
                f"{source.schema_file.name} of source {source.name}",
                "values aggregates numbers, so it would never compute a feature; "
                "declare the field as number or integer, or count it with distinct "
                "or keep it with last",
            )
        by_source[source.name].append(group)
    return {name: tuple(groups) for name, groups in by_source.items()}


def _check_versions(label: str, group: FeatureGroup, seen: dict[str, FeatureGroup]) -> None:
    """Several versions of one name may be configured (v1 served while v2 is backfilled
    and activated), but not one version twice, and all from one source."""
    other = seen.get(f"{group.name}@{group.version}")
    if other is not None:
        raise ConfigError(
            f"{label}.version: feature group {group.name!r} version {group.version} is "
            "defined twice (bump 'version' for a changed definition)"
        )
    first = seen.get(group.name)
    if first is not None and first.source != group.source:
        raise ConfigError(
            f"{label}.source: feature group {group.name!r} version {group.version} reads "
            f"source {group.source!r}, but version {first.version} reads {first.source!r}: "
            "every version of a group must read the same source (the handover from one "
            "version to the next is at that source's offsets); give the group a new name"
        )
    seen.setdefault(group.name, group)
    seen[f"{group.name}@{group.version}"] = group


def _declared_fields(parser: EventParser) -> frozenset[str]:
    contract = getattr(parser.decoder, "contract", None)
    if contract is None:  # confluent-avro: contracts per schema id
        contracts = getattr(parser.decoder, "contracts", {})
        fields: set[str] = set()
        for c in contracts.values():
            fields |= c.top_level_properties
        return frozenset(fields)
    return frozenset(contract.top_level_properties)


def declared_types(parser: EventParser) -> dict[str, list[str]]:
    """Each field's declared type, one entry per contract of the source."""
    contract = getattr(parser.decoder, "contract", None)
    contracts = (
        [contract]
        if contract is not None
        else list(getattr(parser.decoder, "contracts", {}).values())
    )
    out: dict[str, list[str]] = {}
    for c in contracts:
        for name, declared in field_types(c.schema, c.kind).items():
            out.setdefault(name, []).append(declared)
    return out


def _check_numeric(
    where: str, field: str, types: Mapping[str, Sequence[str]], contract: str, why: str
) -> None:
    """Refuse a field the contract declares with no numeric type at all."""
    declared = types.get(field, ())
    if never_numeric(declared):
        raise ConfigError(
            f"{where}: field {field!r} is {' / '.join(sorted(set(declared)))} in the contract "
            f"{contract}; {why}"
        )


def build_monitors(
    settings: Settings,
    parsers: dict[str, EventParser],
    origin: str,
    groups: Mapping[str, Sequence[FeatureGroup]] | None = None,
) -> dict[str, tuple[MonitorConfig, ...]]:
    """Validate ``monitors`` against the sources and feature groups; by source name."""
    sources = {s.name: s for s in settings.sources}
    by_source: dict[str, list[MonitorConfig]] = {name: [] for name in sources}
    names: set[str] = set()
    for index, raw in enumerate(settings.monitors):
        label = f"{origin}: monitors[{index}]"
        try:
            monitor = MonitorConfig.from_config(raw)
        except DriftConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        label += f"({monitor.name})"
        if monitor.name in names:
            raise ConfigError(f"{label}.name: monitor {monitor.name!r} is defined twice")
        names.add(monitor.name)
        source = sources.get(monitor.source)
        if source is None:
            known = ", ".join(sorted(sources))
            raise ConfigError(f"{label}.source: unknown source {monitor.source!r} (known: {known})")
        if monitor.feature is not None:
            window = _check_feature(label, monitor, source.name, groups or {})
            if monitor.skip_first is None and window is not None:
                # learn from windows that have filled: a partial window is no reference
                monitor = monitor.model_copy(update={"skip_first": window})
        declared = _declared_fields(parsers[source.name])
        for key, field in (("field", monitor.field), ("segment_by", monitor.segment_by)):
            if field is not None and declared and field not in declared:
                raise ConfigError(
                    f"{label}.{key}: field {field!r} is not declared in the contract "
                    f"{source.schema_file.name} of source {source.name}"
                )
        if monitor.field is not None:
            _check_numeric(
                f"{label}.field",
                monitor.field,
                declared_types(parsers[source.name]),
                f"{source.schema_file.name} of source {source.name}",
                "a monitor watches numbers (number or integer), so it would never see a value; "
                "monitor a numeric field",
            )
        by_source[source.name].append(monitor)
    return {name: tuple(monitors) for name, monitors in by_source.items()}


def build_quality(
    settings: Settings, parsers: dict[str, EventParser], origin: str
) -> dict[str, QualityChecker]:
    """One data-quality checker per source; fields must exist in the contract."""
    checkers: dict[str, QualityChecker] = {}
    for index, source in enumerate(settings.sources):
        config = source.quality
        declared = _declared_fields(parsers[source.name])
        label = f"{origin}: sources[{index}]({source.name}).quality"
        if declared:
            named = [
                *(("completeness", f) for f in config.completeness or ()),
                *(("fields", f) for f in config.fields),
                *((("unique.field", config.unique.field),) if config.unique else ()),
            ]
            for key, name in named:
                if name not in declared:
                    raise ConfigError(
                        f"{label}.{key}: field {name!r} is not declared in the contract "
                        f"{source.schema_file.name}"
                    )
        checkers[source.name] = QualityChecker(config, contract_fields=declared)
    return checkers


def _check_feature(
    label: str,
    monitor: MonitorConfig,
    source: str,
    groups: Mapping[str, Sequence[FeatureGroup]],
) -> str | None:
    """A feature monitor names a feature of a group computed from the monitor's source.

    ``group.feature`` reads the newest configured version of ``group``,
    ``group@N.feature`` version ``N`` (several versions may be configured).

    Returns the feature's window (e.g. ``"1h"``), None for a feature without one.
    """
    by_ref = group_refs(g for gs in groups.values() for g in gs)
    group = by_ref.get(str(monitor.feature_group))
    if group is None:
        known = ", ".join(sorted(by_ref)) or "none"
        raise ConfigError(
            f"{label}.feature: unknown feature group {monitor.feature_group!r} (known: {known}; "
            "a name alone is its newest configured version, name@N a given one)"
        )
    if group.source != source:
        raise ConfigError(
            f"{label}.feature: group {group.name!r} is computed from source {group.source!r}, "
            f"not from the monitor's source {source!r}"
        )
    names = group.feature_names()
    if monitor.feature_name not in names:
        close = difflib.get_close_matches(str(monitor.feature_name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{label}.feature: group {group.name!r} has no feature {monitor.feature_name!r}{hint}"
        )
    kinds = {spec.name: spec for spec in group.layout.features}
    spec = kinds[str(monitor.feature_name)]
    if spec.kind == "last":
        raise ConfigError(
            f"{label}.feature: {monitor.feature_name!r} is a last value; monitor the event "
            "field itself instead (field: ...)"
        )
    return spec.window.name if spec.window is not None else None


def source_info(settings: Settings, parsers: Mapping[str, EventParser]) -> dict[str, SourceInfo]:
    """Lineage facts of every source: topic, contract file and fingerprint, field types."""
    out: dict[str, SourceInfo] = {}
    for source in settings.sources:
        decoder = parsers[source.name].decoder
        contract = getattr(decoder, "contract", None)
        ids: dict[int, str] = {}
        if contract is not None:
            fingerprint: str | None = contract.fingerprint
            schema_doc = contract.schema
            kind = contract.kind
        else:  # confluent-avro: one contract per schema id
            contracts = getattr(decoder, "contracts", {})
            ids = {sid: c.fingerprint for sid, c in contracts.items()}
            own = [c for c in contracts.values() if str(c.path) == str(source.schema_file)]
            fingerprint = own[0].fingerprint if own else None
            schema_doc = own[0].schema if own else {}
            kind = "avro"
        out[source.name] = SourceInfo(
            name=source.name,
            topic=source.topic,
            entity_key=source.entity_key,
            event_time=source.event_time,
            schema=SchemaInfo(source.schema_file.name, source.encoding, fingerprint, ids),
            field_types=field_types(schema_doc, kind),
        )
    return out


def archived_sources(settings: Settings, sources: Sources) -> list[str]:
    """The sources the config archives: ``offline.sources``, or every one a group reads."""
    if settings.offline.sources is not None:
        return list(settings.offline.sources)
    return [s.name for s in settings.sources if sources.groups.get(s.name)]
