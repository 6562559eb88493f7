"""Confluent wire format: ``0x00`` magic byte, 4-byte big-endian schema id, Avro body.

Schema ids are resolved first from the ids mapped to local ``.avsc`` files in
the config, then (when a schema registry URL is configured) from the registry.
A registry lookup is network I/O, so it never runs inside :meth:`decode`:
the worker calls :meth:`ConfluentAvroDecoder.unknown_ids` on a batch and
fetches those ids off the event loop before decoding it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from driftline.schemas.avro_contract import AvroContract
from driftline.schemas.exceptions import reject

MAGIC = 0
HEADER_SIZE = 5


def frame(schema_id: int, body: bytes) -> bytes:
    """Wrap an Avro body in the Confluent wire format (used by producers and tests)."""
    return bytes([MAGIC]) + schema_id.to_bytes(4, "big") + body


def schema_id_of(value: bytes) -> int | None:
    """The schema id of a framed value, or ``None`` when the framing is wrong."""
    if len(value) < HEADER_SIZE or value[0] != MAGIC:
        return None
    return int.from_bytes(value[1:HEADER_SIZE], "big")


class SchemaLookup(Protocol):
    """Something that can fetch a schema by id (a schema registry client)."""

    def fetch(self, schema_id: int) -> AvroContract | None: ...


class ConfluentAvroDecoder:
    """Decode Confluent-framed Avro values to dicts."""

    def __init__(
        self, contracts: Mapping[int, AvroContract], registry: SchemaLookup | None = None
    ) -> None:
        self._contracts: dict[int, AvroContract] = dict(contracts)
        self._registry = registry
        self._unresolvable: set[int] = set()

    @property
    def contracts(self) -> Mapping[int, AvroContract]:
        return self._contracts

    def unknown_ids(self, values: Iterable[bytes]) -> set[int]:
        """Ids in ``values`` worth asking the registry for (none without a registry)."""
        if self._registry is None:
            return set()
        known = self._contracts
        wanted = set()
        for value in values:
            sid = schema_id_of(value)
            if sid is not None and sid not in known and sid not in self._unresolvable:
                wanted.add(sid)
        return wanted

    def resolve(self, schema_ids: Iterable[int]) -> None:
        """Fetch ``schema_ids`` from the registry (blocking: call it in a thread)."""
        if self._registry is None:
            return
        for sid in schema_ids:
            contract = self._registry.fetch(sid)
            if contract is None:
                self._unresolvable.add(sid)
            else:
                self._contracts[sid] = contract

    def decode(self, value: bytes) -> dict[str, Any]:
        if len(value) < HEADER_SIZE:
            raise reject(
                "bad_wire_format", f"{len(value)} byte(s): shorter than the 5-byte Confluent header"
            )
        if value[0] != MAGIC:
            raise reject(
                "bad_wire_format",
                f"magic byte is {value[0]:#04x}, expected 0x00 (Confluent wire format)",
            )
        sid = int.from_bytes(value[1:HEADER_SIZE], "big")
        contract = self._contracts.get(sid)
        if contract is None:
            raise reject(
                "unknown_schema_id",
                f"schema id {sid} is not mapped to a contract nor known to the registry",
            )
        return contract.decode_binary(memoryview(value)[HEADER_SIZE:])
