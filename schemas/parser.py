"""From raw record bytes to a typed event: size check, decode, validate, extract.

This is the whole per-record hot path of ingestion.  It is pure (no I/O) and
raises :class:`~driftline.schemas.exceptions.InvalidEvent` for a bad record, so the
caller decides what a rejection means (dead-letter it, count it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from driftline.schemas.avro_contract import AvroContract
from driftline.schemas.exceptions import reject
from driftline.schemas.json_contract import JsonSchemaContract, decode_json

EventTimeUnit = Literal["ms", "s", "iso8601"]

#: Event times beyond ±2**53 ms (±285,000 years) are refused: every later
#: stage (JSON samples, float arithmetic, Redis scores) holds them exactly.
MAX_EVENT_TIME_MS = 1 << 53


class ParsedEvent(NamedTuple):
    """A valid event: its entity, its event time (epoch ms) and its fields."""

    entity: str
    event_time_ms: int
    data: dict[str, Any]


class Decoder(Protocol):
    def decode(self, value: bytes) -> dict[str, Any]: ...


class JsonEventDecoder:
    """JSON bytes checked against a JSON Schema or an Avro contract."""

    def __init__(self, contract: JsonSchemaContract | AvroContract) -> None:
        self.contract = contract
        self._validate = contract.validate
        #: msgspec's one-pass accept check of the bytes, when the contract is in its
        #: subset (``True``: valid, the validator is skipped; ``False``: it decides)
        self._fast = contract.fast_check if isinstance(contract, JsonSchemaContract) else None

    def decode(self, value: bytes) -> dict[str, Any]:
        obj = decode_json(value)
        if not isinstance(obj, dict):
            raise reject(
                "not_an_object", f"an event must be a JSON object, got {type(obj).__name__}"
            )
        fast = self._fast
        if fast is None or not fast(value):
            self._validate(obj)
        return obj


def _event_time_ms(raw: Any, unit: EventTimeUnit, field: str) -> int:
    if isinstance(raw, bool):
        raise reject("bad_event_time", f"$.{field}: a boolean is not a time")
    if isinstance(raw, int | float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise reject("bad_event_time", f"$.{field}: a non-finite number is not a time")
        try:
            ms = int(raw * 1000) if unit == "s" else int(raw)
        except (OverflowError, ValueError):
            ms = MAX_EVENT_TIME_MS + 1
        if not -MAX_EVENT_TIME_MS <= ms <= MAX_EVENT_TIME_MS:
            raise reject("bad_event_time", f"$.{field}: number out of range for a time")
        return ms
    if isinstance(raw, datetime):  # Avro timestamp-millis/micros logical types
        if raw.tzinfo is None:
            raise reject("bad_event_time", f"$.{field}: timestamp has no time zone")
        return int(raw.timestamp() * 1000)  # datetime spans years 1-9999: in range
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise reject("bad_event_time", f"$.{field}: not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise reject("bad_event_time", f"$.{field}: ISO time without offset (add Z or +00:00)")
        try:
            return int(parsed.timestamp() * 1000)
        except (OverflowError, ValueError, OSError):
            raise reject("bad_event_time", f"$.{field}: time out of range") from None
    raise reject("bad_event_time", f"$.{field}: {type(raw).__name__} is not a time")


class EventParser:
    """Turns one record value into a :class:`ParsedEvent` or raises ``InvalidEvent``."""

    def __init__(
        self,
        decoder: Decoder,
        *,
        entity_key: str,
        event_time_field: str | None = None,
        event_time_unit: EventTimeUnit = "ms",
        max_event_bytes: int = 1 << 20,
    ) -> None:
        self.decoder = decoder
        self.entity_key = entity_key
        self.event_time_field = event_time_field
        self.event_time_unit = event_time_unit
        self.max_event_bytes = max_event_bytes

    def parse(self, value: bytes | None, record_timestamp_ms: int) -> ParsedEvent:
        if value is None:
            value = b""
        if len(value) > self.max_event_bytes:
            raise reject(
                "oversize", f"{len(value)} bytes is over the limit of {self.max_event_bytes}"
            )
        data = self.decoder.decode(value)
        entity = data.get(self.entity_key)
        kind = type(entity)  # exact types: a bool is not an int here
        if kind is int:
            entity = str(entity)
        elif kind is not str or not entity:
            raise reject(
                "missing_entity_key",
                f"$.{self.entity_key}: entity key is missing or not a string/integer",
            )
        field = self.event_time_field
        raw_time = data.get(field) if field is not None else None
        if raw_time is None:
            event_time = record_timestamp_ms
        elif (
            type(raw_time) is int
            and self.event_time_unit == "ms"
            and -MAX_EVENT_TIME_MS <= raw_time <= MAX_EVENT_TIME_MS
        ):
            event_time = raw_time  # the common case, without the general checks
        else:
            event_time = _event_time_ms(raw_time, self.event_time_unit, field or "")
        return ParsedEvent(entity, event_time, data)
