"""JSON Schema (draft 2020-12) contracts for JSON events.

Engine choice, made once per schema at load time:

* ``fastjsonschema`` compiles a schema to Python code and is an order of
  magnitude faster than ``jsonschema`` on valid events (see
  ``bench/validation.py``).  It implements draft 2019-09, not 2020-12, and
  silently ignores keywords it does not know (``prefixItems``,
  ``unevaluatedProperties``, ``$dynamicRef`` ...), which would let invalid
  events through.
* ``jsonschema``'s ``Draft202012Validator`` implements 2020-12 exactly.

So a schema whose keywords all lie in :data:`FAST_SAFE_KEYWORDS` (keywords with
the same meaning in both drafts) is checked with fastjsonschema, any other with
jsonschema.  Either way, a *failing* event is explained by jsonschema, which
reports the most relevant error (``best_match``) and whose verdict is the
contract: fastjsonschema reports only its first error.

``format`` is an annotation, as 2020-12 specifies by default: neither engine
asserts it, so both agree.

Before either engine, the worker asks msgspec (:mod:`driftline.schemas.fast_check`):
for a flat contract it accepts the valid events' bytes in one pass, and the
engines only see what it is unsure about.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError as JsonSchemaSchemaError
from jsonschema.exceptions import ValidationError, best_match

from driftline.schemas.exceptions import InvalidEvent, SchemaError, reject, short_json
from driftline.schemas.fast_check import ANNOTATIONS, FastCheck, compile_fast_check

#: Keywords whose semantics are identical in drafts 2019-09 and 2020-12 and
#: which fastjsonschema implements.  ``items`` is safe only in its single-schema
#: form (checked separately).
FAST_SAFE_KEYWORDS = ANNOTATIONS | frozenset(
    {
        "$schema",
        "$id",
        "$defs",
        "definitions",
        "$ref",
        "type",
        "enum",
        "const",
        "multipleOf",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
        "contains",
        "properties",
        "patternProperties",
        "additionalProperties",
        "required",
        "minProperties",
        "maxProperties",
        "propertyNames",
        "dependentRequired",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
    }
)
#: Keywords whose value is a map of name -> subschema.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
#: Keywords whose value is a list of subschemas.
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf"})
#: Keywords whose value is one subschema.
_SCHEMA_ONE = frozenset(
    {"items", "contains", "additionalProperties", "propertyNames", "not", "if", "then", "else"}
)

_REASON_BY_KEYWORD = {"required": "missing_field", "type": "wrong_type"}


def _subschemas(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                yield key, sub
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for sub in value:
                yield key, sub
        elif key in _SCHEMA_ONE:
            yield key, value


def fast_engine_is_exact(schema: Any) -> bool:
    """True when fastjsonschema gives the same verdict as draft 2020-12 for ``schema``."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    if any(key not in FAST_SAFE_KEYWORDS for key in schema):
        return False
    if isinstance(schema.get("items"), list):  # 2019-09 tuple form means prefixItems
        return False
    if isinstance(schema.get("$ref"), str) and not schema["$ref"].startswith("#"):
        return False  # remote refs: leave resolution to jsonschema's registry
    return all(fast_engine_is_exact(sub) for _, sub in _subschemas(schema))


def _json_path(error: ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return "$" + path


class JsonSchemaContract:
    """A compiled JSON Schema.  ``validate(obj)`` raises :class:`InvalidEvent`."""

    kind = "jsonschema"

    def __init__(self, path: Path, schema: dict[str, Any], raw: bytes) -> None:
        self.path = path
        self.schema = schema
        self.fingerprint = "sha256:" + hashlib.sha256(raw).hexdigest()
        try:
            Draft202012Validator.check_schema(schema)
        except JsonSchemaSchemaError as exc:
            where = _json_path(exc) if exc.absolute_path else "$"
            raise SchemaError(
                path, f"not a valid JSON Schema (2020-12) at {where}: {exc.message}"
            ) from None
        self._explainer = Draft202012Validator(schema)
        self.engine = "fastjsonschema" if fast_engine_is_exact(schema) else "jsonschema"
        self._check: Callable[[Any], object]
        if self.engine == "fastjsonschema":
            try:
                self._check = fastjsonschema.compile(schema, use_formats=False)
            except fastjsonschema.JsonSchemaDefinitionException as exc:
                raise SchemaError(path, f"cannot compile schema: {exc}") from None
        else:
            self._check = self._validate_exact
        #: accepts the bytes of events this contract accepts, in one msgspec pass
        #: (None outside its subset; see :mod:`driftline.schemas.fast_check`)
        self.fast_check: FastCheck | None = compile_fast_check(schema)

    @classmethod
    def from_file(cls, path: Path) -> JsonSchemaContract:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SchemaError(path, f"cannot read contract: {exc.strerror}") from None
        try:
            schema = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(path, f"not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise SchemaError(path, "a JSON Schema contract must be a JSON object")
        return cls(path, schema, raw)

    @property
    def top_level_properties(self) -> frozenset[str]:
        props = self.schema.get("properties", {})
        return frozenset(props) if isinstance(props, dict) else frozenset()

    @property
    def required(self) -> frozenset[str]:
        req = self.schema.get("required", [])
        return frozenset(req) if isinstance(req, list) else frozenset()

    def _validate_exact(self, obj: Any) -> None:
        if not self._explainer.is_valid(obj):
            raise ValidationError("invalid")  # explained below

    def validate(self, obj: Any) -> None:
        try:
            self._check(obj)
        except (fastjsonschema.JsonSchemaValueException, ValidationError):
            self._explain(obj)

    def _explain(self, obj: Any) -> None:
        try:
            error = best_match(self._explainer.iter_errors(obj))
        except RecursionError:  # deeper than the validator's recursion (orjson allows 1024)
            raise reject(
                "schema_violation", "$: too deeply nested to validate", "RecursionError"
            ) from None
        if error is None:  # the fast engine disagreed with 2020-12: the contract wins
            return
        reason = _REASON_BY_KEYWORD.get(str(error.validator), "schema_violation")
        raise reject(reason, f"{_json_path(error)}: {describe(error)}", "ValidationError")


def describe(error: ValidationError) -> str:
    """What the contract asks for at the failing place, without the event's value.

    jsonschema's own messages quote the offending value (``'a@b.c' is not of
    type 'number'``); those end up in logs and headers, so personal data in a
    bad field would too.  The dead-letter topic keeps the bytes for whoever
    may read them; the message names the rule, taken from the schema.
    """
    keyword = str(error.validator)
    rule = error.validator_value
    if keyword == "required":
        # the missing names come from the schema, not the event
        instance = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in rule if name not in instance] if isinstance(rule, list) else []
        return f"required property {short_json(missing[0] if missing else rule)} is missing"
    if keyword == "type":
        return f"expected type {short_json(rule)}, got {_json_type(error.instance)}"
    if keyword == "additionalProperties" and rule is False:
        return "has properties the contract does not allow (additionalProperties is false)"
    if keyword in ("enum", "const"):
        return f"value is not one of the allowed values ({keyword} {short_json(rule)})"
    return f"value fails {keyword!r} {short_json(rule)}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode_json(value: bytes) -> Any:
    """Parse JSON bytes strictly; classify failures into reason codes.

    orjson rejects invalid UTF-8, the non-standard ``NaN``/``Infinity``
    literals and nesting deeper than 1024 levels.  Classification only runs on
    the failure path, so valid events pay for one ``orjson.loads`` and nothing
    else; it reads orjson's message and the text at its position, never
    re-parses (a recursive parser would overflow the stack on deep nesting).
    """
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise classify_json_error(value, exc) from None


def classify_json_error(value: bytes, exc: orjson.JSONDecodeError) -> InvalidEvent:
    """The reason code for bytes orjson refused, in time linear in their size."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return reject(
            "invalid_utf8", f"payload is not valid UTF-8 at byte {uexc.start}", "UnicodeDecodeError"
        )
    detail = str(exc)
    pos = exc.pos if isinstance(exc.pos, int) else -1
    if "depth limit" in detail or "recursion" in detail:
        return reject(
            "too_deep",
            f"nesting is deeper than the parser's limit of 1024 levels ({detail})",
            "JSONDecodeError",
        )
    if 0 <= pos < len(text) and ("expected a JSON value" in detail or "after sign" in detail):
        # orjson stops at "NaN", at "Infinity", or after the "-" of "-Infinity"
        here = text[pos : pos + 8]
        if here.startswith(("NaN", "Infinity")):
            name = "NaN" if here.startswith("NaN") else "Infinity"
            if text[pos - 1 : pos] == "-":
                name = "-" + name
            message = f"{name} is not a valid JSON number (RFC 8259); send null or omit the field"
            return reject("non_finite_number", message, "JSONDecodeError")
    if "infinity" in detail:  # e.g. 1e400: a finite literal that overflows a double
        return reject(
            "non_finite_number", f"a number overflows a 64-bit float ({detail})", "JSONDecodeError"
        )
    if "UTF-8" in detail or "surrogate" in detail:  # e.g. an escaped lone surrogate "\\ud800"
        return reject("invalid_utf8", detail, "JSONDecodeError")
    if not text.strip():
        return reject("malformed_json", "empty value: a JSON object is expected", "JSONDecodeError")
    return reject("malformed_json", detail, "JSONDecodeError")
