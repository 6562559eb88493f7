"""Compile every source's contract into its parser (no Faust: ``check-config`` uses it)."""

from __future__ import annotations

from schemas import EventParser, build_parser
from schemas.registry import SchemaRegistryClient
from streams.settings import Settings


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
