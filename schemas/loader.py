"""Load contract files and build the parser for one source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from driftline.schemas.avro_contract import AvroContract
from driftline.schemas.exceptions import SchemaError
from driftline.schemas.json_contract import JsonSchemaContract
from driftline.schemas.parser import Decoder, EventParser, EventTimeUnit, JsonEventDecoder
from driftline.schemas.wire import ConfluentAvroDecoder, SchemaLookup

Contract = JsonSchemaContract | AvroContract


def load_contract(path: Path) -> Contract:
    """Load a contract by its extension: ``.avsc`` is Avro, ``.json`` JSON Schema."""
    if not path.exists():
        raise SchemaError(path, "contract file does not exist")
    if path.suffix == ".avsc":
        return AvroContract.from_file(path)
    if path.suffix == ".json":
        return JsonSchemaContract.from_file(path)
    raise SchemaError(path, "unknown contract type: use .avsc (Avro) or .json (JSON Schema)")


def build_parser(
    *,
    encoding: str,
    contract_path: Path,
    entity_key: str,
    event_time_field: str | None,
    event_time_unit: EventTimeUnit,
    max_event_bytes: int,
    schema_ids: Mapping[int, Path] | None = None,
    registry: SchemaLookup | None = None,
) -> EventParser:
    """Compile a source's contract(s) and check the config against them.

    ``encoding`` is ``json`` (JSON bodies checked against the contract) or
    ``confluent-avro`` (Avro binary in the Confluent wire format; ``schema_ids``
    maps ids to local ``.avsc`` files, the registry serves the rest).
    """
    contract = load_contract(contract_path)
    decoder: Decoder
    if encoding == "json":
        decoder = JsonEventDecoder(contract)
    elif encoding == "confluent-avro":
        if not isinstance(contract, AvroContract):
            raise SchemaError(
                contract_path, "encoding confluent-avro needs an Avro (.avsc) contract"
            )
        contracts: dict[int, AvroContract] = {}
        for sid, path in (schema_ids or {}).items():
            loaded = load_contract(path)
            if not isinstance(loaded, AvroContract):
                raise SchemaError(path, f"schema id {sid} must map to an Avro (.avsc) file")
            contracts[sid] = loaded
        decoder = ConfluentAvroDecoder(contracts, registry)
    else:
        raise SchemaError(
            contract_path, f"unknown encoding {encoding!r}: use json or confluent-avro"
        )
    fields = contract.top_level_properties
    if fields and entity_key not in fields:
        raise SchemaError(
            contract_path, f"entity key field {entity_key!r} is not declared in the contract"
        )
    if event_time_field is not None and fields and event_time_field not in fields:
        raise SchemaError(
            contract_path, f"event time field {event_time_field!r} is not declared in the contract"
        )
    return EventParser(
        decoder,
        entity_key=entity_key,
        event_time_field=event_time_field,
        event_time_unit=event_time_unit,
        max_event_bytes=max_event_bytes,
    )
