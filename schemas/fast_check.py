"""A one-pass accept check of JSON bytes, compiled with msgspec from a flat contract.

The worker's hot path used to decode every event with orjson and then run the
contract's validator (fastjsonschema's generated Python) on the dict: the
validator was a fifth of the worker's time.  msgspec decodes and checks a
typed struct in C in one pass over the bytes, about as fast as the decode
alone.  So a contract whose rules msgspec can state exactly gets a
:func:`compile_fast_check`: ``check(value_bytes) -> bool``.

**One-sided, by design.**  ``True`` means the bytes are an object that the
contract accepts; ``False`` means "not sure", and the caller runs the exact
validator (and its explanation) as before.  So the fast path can only speed
up valid events, never change a verdict, and whatever msgspec is stricter
about than JSON Schema (``1.0`` for an ``integer``, a duplicate key whose
copies disagree, an integer beyond 64 bits for an ``integer``) merely takes
the slow path.  ``tests/unit/test_fast_check.py`` checks the one side with
hypothesis: on random schemas of the subset and random objects, every
accepted object is valid for draft 2020-12 (jsonschema).

**The subset** (anything else: no fast check, the contract's validator alone):

* the top level is ``"type": "object"`` with ``properties``, ``required`` and
  ``additionalProperties`` ``true`` (default) or ``false``;
* each property is a scalar: ``type`` (a name or a list of ``string``,
  ``number``, ``integer``, ``boolean``, ``null``) with ``minLength``,
  ``maxLength``, ``pattern`` for strings and ``minimum``, ``maximum``,
  ``exclusiveMinimum``, ``exclusiveMaximum`` for numbers (bounds within
  ±2**53, where comparing after msgspec's int-to-float conversion is exact),
  or an ``enum`` / ``const`` of strings (optionally with ``null``), or no
  rule at all;
* annotations (``title``, ``description``, ``format``, ``examples`` ...) are
  ignored, as both engines ignore them.

Both msgspec and Python's ``re`` (which the other engines use too) match
``pattern`` unanchored; lengths count code points, as JSON Schema does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

#: Keywords that do not constrain a value (2020-12 annotations, and ``format``,
#: which both engines treat as one).
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "$comment",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
    }
)
_TOP = ANNOTATIONS | {"$schema", "$id", "type", "properties", "required", "additionalProperties"}
_STRING = frozenset({"minLength", "maxLength", "pattern"})
_NUMBER = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_PROPERTY = ANNOTATIONS | _STRING | _NUMBER | {"type", "enum", "const"}
_EXACT = 2**53

FastCheck = Callable[[bytes], bool]


class _Unsupported(Exception):
    """The schema uses something the fast check does not state exactly."""


def compile_fast_check(schema: Any) -> FastCheck | None:
    """``check(bytes) -> bool`` (True: an object the contract accepts), or None."""
    try:
        struct = _struct(schema)
    except _Unsupported:
        return None
    decode = msgspec.json.Decoder(struct).decode
    # RecursionError: msgspec skips deep unknown values recursively; the validator decides
    errors = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)

    def check(value: bytes) -> bool:
        try:
            decode(value)
        except errors:
            return False
        return True

    return check


def _struct(schema: Any) -> type[msgspec.Struct]:
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise _Unsupported
    if any(key not in _TOP for key in schema):
        raise _Unsupported
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list):
        raise _Unsupported
    if extra is not True and extra is not False:  # a schema for the others: not ours
        raise _Unsupported
    if any(not isinstance(name, str) for name in required) or set(required) - set(properties):
        raise _Unsupported  # a required name without a property rule: leave it to the validator
    fields: list[tuple[str, Any, Any] | tuple[str, Any]] = []
    rename: dict[str, str] = {}
    for i, (name, rule) in enumerate(properties.items()):
        attr = f"f{i}"
        rename[attr] = name
        kind = _property_type(rule)
        if name in required:
            fields.append((attr, kind))
        else:
            fields.append((attr, kind, msgspec.UNSET))
    # required fields first: a struct's fields without default must precede the others
    fields.sort(key=len)
    return msgspec.defstruct(
        "Contract", fields, rename=rename, forbid_unknown_fields=extra is False
    )


def _property_type(rule: Any) -> Any:
    if rule is True or rule == {}:
        return Any
    if not isinstance(rule, dict) or any(key not in _PROPERTY for key in rule):
        raise _Unsupported
    if "enum" in rule or "const" in rule:
        return _choices(rule)
    if "type" not in rule:
        if set(rule) - ANNOTATIONS:
            raise _Unsupported  # constraints without a type apply to some types only
        return Any
    names = rule["type"] if isinstance(rule["type"], list) else [rule["type"]]
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise _Unsupported
    if "number" in names and "integer" in names:
        names = [n for n in names if n != "integer"]  # every integer is a number
    # a constraint of another type is vacuous (minLength says nothing about a number)
    members = [_typed(name, rule) for name in names]
    kind: Any = members[0]
    for member in members[1:]:
        kind = kind | member
    return kind


def _typed(name: str, rule: dict[str, Any]) -> Any:
    if name == "string":
        meta: dict[str, Any] = {}
        for key, arg in (("minLength", "min_length"), ("maxLength", "max_length")):
            if key in rule:
                value = rule[key]
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise _Unsupported
                meta[arg] = value
        if "pattern" in rule:
            if not isinstance(rule["pattern"], str):
                raise _Unsupported
            meta["pattern"] = rule["pattern"]
        return Annotated[str, msgspec.Meta(**meta)] if meta else str
    if name in ("number", "integer"):
        meta = _bounds(rule, integer=name == "integer")
        base: Any = int if name == "integer" else float
        return Annotated[base, msgspec.Meta(**meta)] if meta else base
    if name == "boolean":
        return bool
    if name == "null":
        return None
    raise _Unsupported


def _bounds(rule: dict[str, Any], *, integer: bool) -> dict[str, Any]:
    """msgspec's ``ge``/``gt``/``le``/``lt`` for JSON Schema's bounds: the strictest of each side.

    For an ``integer`` every bound becomes the inclusive integer one
    (``exclusiveMinimum: 0.5`` is ``ge=1``): msgspec takes one bound per side.
    """
    lows: list[tuple[float, bool]] = []  # (bound, exclusive)
    highs: list[tuple[float, bool]] = []
    for key, side, exclusive in (
        ("minimum", lows, False),
        ("exclusiveMinimum", lows, True),
        ("maximum", highs, False),
        ("exclusiveMaximum", highs, True),
    ):
        if key in rule:
            value = rule[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Unsupported
            if not -_EXACT < value < _EXACT:
                raise _Unsupported
            side.append((value, exclusive))
    meta: dict[str, Any] = {}
    if integer:
        if lows:
            meta["ge"] = max(math.floor(b) + 1 if ex else math.ceil(b) for b, ex in lows)
        if highs:
            meta["le"] = min(math.ceil(b) - 1 if ex else math.floor(b) for b, ex in highs)
        return meta
    if lows:
        bound, exclusive = max(lows, key=lambda p: (p[0], p[1]))  # at a tie, > is stricter
        meta["gt" if exclusive else "ge"] = float(bound)
    if highs:
        bound, exclusive = min(highs, key=lambda p: (p[0], not p[1]))
        meta["lt" if exclusive else "le"] = float(bound)
    return meta


def _choices(rule: dict[str, Any]) -> Any:
    """``enum`` / ``const`` of strings (and null), with no other constraint but ``type``."""
    if set(rule) - ANNOTATIONS - {"enum", "const", "type"} or ("enum" in rule and "const" in rule):
        raise _Unsupported
    allowed = rule["enum"] if "enum" in rule else [rule["const"]]
    if not isinstance(allowed, list) or not allowed:
        raise _Unsupported
    strings = [v for v in allowed if isinstance(v, str)]
    nullable = None in allowed
    if len(strings) + int(nullable) != len(allowed) or not strings:
        raise _Unsupported
    if "type" in rule:
        types = rule["type"] if isinstance(rule["type"], list) else [rule["type"]]
        if "string" not in types:
            raise _Unsupported  # an enum the type excludes: leave it to the validator
        if nullable and "null" not in types:
            nullable = False
    kind: Any = Literal[tuple(strings)]
    return kind | None if nullable else kind


__all__ = ["ANNOTATIONS", "FastCheck", "compile_fast_check"]
