"""The declared type of each top-level field of a contract, as written in it.

Used where a config names contract fields for what it expects of them: feature
``values`` and drift monitors aggregate numbers, so a field declared as a
string would give them nothing, for ever (``streams/sources.py`` refuses it),
and the registry shows the types beside each feature.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Declared types whose values a numeric aggregation can use (JSON Schema and Avro).
NUMERIC_TYPES: frozenset[str] = frozenset({"number", "integer", "int", "long", "float", "double"})
#: Declared types that never hold a number.  Anything else (a bare ``enum``, a
#: named Avro type defined elsewhere) is not known, and given the benefit of the doubt.
NON_NUMERIC_TYPES: frozenset[str] = frozenset(
    {"string", "boolean", "object", "array", "bytes", "record", "enum", "map", "fixed"}
)


def field_types(schema: Mapping[str, Any], kind: str) -> dict[str, str]:
    """The declared type of each top-level field of a JSON Schema or Avro record.

    Only what is written in the contract: a JSON Schema property without
    ``type`` (say, a bare ``enum``) is ``"any"``.  Avro unions are joined
    with ``|``; named and complex Avro types show their ``type``.
    """
    out: dict[str, str] = {}
    if kind == "avro":
        for f in schema.get("fields", []):
            if isinstance(f, dict) and isinstance(f.get("name"), str):
                out[f["name"]] = _avro_type(f.get("type"))
        return out
    props = schema.get("properties", {})
    if isinstance(props, dict):
        for name, prop in props.items():
            t = prop.get("type") if isinstance(prop, dict) else None
            if isinstance(t, list):
                out[name] = "|".join(str(x) for x in t)
            else:
                out[name] = str(t) if t is not None else "any"
    return out


def _avro_type(t: Any) -> str:
    if isinstance(t, list):
        return "|".join(_avro_type(x) for x in t)
    if isinstance(t, dict):
        logical = t.get("logicalType")
        return f"{t.get('type')}({logical})" if logical else str(t.get("type"))
    return str(t)


def never_numeric(declared: Iterable[str]) -> bool:
    """Whether no alternative of the declared types (``"string|null"``) can hold a number.

    *declared* may list one type per contract (a Confluent source has several):
    one numeric alternative anywhere is enough, and so is one type not known to
    be non-numeric.  A logical type counts as its base (``long(timestamp-millis)``
    is numeric; ``bytes(decimal)`` decodes to a ``Decimal``, which is not).
    """
    alternatives = [
        alt.split("(", 1)[0] for t in declared for alt in t.split("|") if alt and alt != "null"
    ]
    return bool(alternatives) and all(alt in NON_NUMERIC_TYPES for alt in alternatives)
