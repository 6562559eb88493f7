"""Avro contracts: JSON events checked against an ``.avsc``, and Avro binary.

An Avro schema can serve two encodings:

* **JSON events validated against the Avro schema** (plain JSON objects, union
  values given directly rather than in Avro's ``{"type": value}`` JSON
  encoding).  Fields the schema does not declare are ignored, as Avro readers
  ignore them.
* **Avro binary** bodies, decoded with the schema as the writer's schema (the
  Confluent framing around them is handled in :mod:`driftline.schemas.wire`).  A body
  with bytes left over after the record is rejected: it was written with a
  different schema, and decoding it with this one would produce garbage.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.validation import ValidationError as AvroValidationError
from fastavro.validation import validate as avro_validate

from driftline.schemas.exceptions import SchemaError, reject, short_json


def _is_nullable(avro_type: Any) -> bool:
    return avro_type == "null" or (isinstance(avro_type, list) and "null" in avro_type)


class AvroContract:
    """A parsed Avro record schema."""

    kind = "avro"

    def __init__(self, path: Path | str, schema: dict[str, Any], raw: bytes) -> None:
        self.path = path
        self.fingerprint = "sha256:" + hashlib.sha256(raw).hexdigest()
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise SchemaError(path, "an Avro event contract must be a schema of type 'record'")
        try:
            self.parsed = fastavro.parse_schema(schema)
        except Exception as exc:  # fastavro raises several unrelated types here
            raise SchemaError(path, f"not a valid Avro schema: {exc}") from None
        self.schema = schema
        fields = schema.get("fields", [])
        self._required = tuple(
            f["name"] for f in fields if "default" not in f and not _is_nullable(f.get("type"))
        )
        self._fields = frozenset(f["name"] for f in fields)

    @classmethod
    def from_file(cls, path: Path) -> AvroContract:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SchemaError(path, f"cannot read contract: {exc.strerror}") from None
        return cls.from_bytes(path, raw)

    @classmethod
    def from_bytes(cls, path: Path | str, raw: bytes) -> AvroContract:
        try:
            schema = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(path, f"not valid JSON: {exc}") from None
        return cls(path, schema, raw)

    @property
    def top_level_properties(self) -> frozenset[str]:
        return self._fields

    @property
    def required(self) -> frozenset[str]:
        return frozenset(self._required)

    def validate(self, obj: Any) -> None:
        """Check a decoded JSON object against the schema."""
        try:
            avro_validate(obj, self.parsed, raise_errors=True)
        except AvroValidationError as exc:
            missing = [name for name in self._required if name not in obj]
            if missing:
                raise reject(
                    "missing_field", f"$.{missing[0]}: required field is missing", "ValidationError"
                ) from None
            details = "; ".join(
                f"$.{err.field.rsplit('.', 1)[-1]}: expected Avro type {short_json(err.schema)}, "
                f"got {type(err.datum).__name__}"
                if hasattr(err, "field")
                else "does not match the Avro schema"
                for err in exc.errors
            )
            raise reject(
                "wrong_type", details or "does not match the Avro schema", "ValidationError"
            ) from None

    def decode_binary(self, body: bytes | memoryview) -> dict[str, Any]:
        """Decode one Avro binary record written with this schema."""
        buf = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(buf, self.parsed, None)
        except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, ...
            raise reject(
                "avro_decode_error",
                f"cannot decode Avro body: {type(exc).__name__}: {exc}",
                type(exc).__name__,
            ) from None
        left = len(body) - buf.tell()
        if left:
            raise reject(
                "avro_decode_error",
                f"{left} byte(s) left after the record: written with a different schema?",
                "TrailingBytes",
            )
        if not isinstance(record, dict):
            raise reject("not_an_object", "Avro body did not decode to a record")
        return record
