"""Checkpoint documents shared by :class:`~driftline.drift.monitor.Monitor` and
:class:`~driftline.drift.segmented.SegmentedMonitor`.

A checkpoint is one JSON object, never pickled objects: whoever can write the
checkpoint key can then at most make a monitor learn afresh, not run code in
the worker.  Its ``format`` names the kind and the version::

    {"format": "driftline.monitor/2", "config": {...}, "n": 3100, "phase": "relearning",
     "reference": "<base64 of little-endian float64s>", "channels": [...], ...}

Float arrays (the warm-up sample, the reference, the recent window) are
base64 of little-endian doubles: exact, and a third of the size of decimal
JSON numbers.  Detectors are stored as their numbers (:mod:`driftline.drift.detector_state`).
The format version changes with any incompatible change of the document; a
document of another version, a pickled checkpoint of driftline's format 1
(``DLMON``/``DLSEG`` + pickle), or anything else is refused with a
:class:`~driftline.drift.exceptions.DriftStateError` whose ``reason`` says which, and
is never decoded further.  The document carries the configuration it was
written under: restoring under another one is refused, because thresholds,
warm-up sizes and detector lists only make sense together.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from driftline.drift.config import MonitorConfig
from driftline.drift.exceptions import DriftStateError

MONITOR_FORMAT = "driftline.monitor/3"
SEGMENTED_FORMAT = "driftline.segmented-monitor/3"

# Format 1: magic + b"\x01" + pickle.  Recognised only to be refused by name.
_PICKLED_MAGIC = (b"DLMON", b"DLSEG")


def dump_document(document: Mapping[str, Any]) -> bytes:
    return orjson.dumps(document)


def load_document(data: bytes, fmt: str, what: str) -> dict[str, Any]:
    """The checkpoint document in ``data`` if it is one of format ``fmt``."""
    if not isinstance(data, bytes | bytearray):
        raise DriftStateError(f"not a drift {what} checkpoint", "unreadable")
    if data.startswith(_PICKLED_MAGIC) or data[:1] == b"\x80":
        raise DriftStateError(
            f"drift {what} checkpoint is in the pickle format of older driftline versions, "
            "which is refused unread (unpickling runs code); the monitor learns afresh",
            "pickle",
        )
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DriftStateError(f"not a drift {what} checkpoint", "unreadable") from None
    found = document.get("format") if isinstance(document, dict) else None
    if not isinstance(found, str) or not found.startswith("driftline."):
        raise DriftStateError(f"not a drift {what} checkpoint", "unreadable")
    if found != fmt:
        kind, _, version = found.partition("/")
        if kind != fmt.partition("/")[0]:
            raise DriftStateError(f"not a drift {what} checkpoint ({found})", "unreadable")
        raise DriftStateError(
            f"drift {what} checkpoint format {version!r} is not supported "
            f"(this driftline reads {fmt}); start the {what} afresh",
            "format",
        )
    if not isinstance(document.get("config"), dict):
        raise DriftStateError(f"corrupt drift {what} checkpoint: no configuration", "corrupt")
    assert isinstance(document, dict)
    return document


def pack_floats(values: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode("ascii")


def unpack_floats(text: object, what: str, *, limit: int) -> list[float]:
    """Finite floats of :func:`pack_floats`, at most ``limit`` of them."""
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise DriftStateError(f"{what}: expected base64 float64s", "corrupt") from None
    if len(raw) % 8 or len(raw) // 8 > limit:
        raise DriftStateError(f"{what}: expected at most {limit} float64s", "corrupt")
    values = list(struct.unpack(f"<{len(raw) // 8}d", raw))
    if not all(math.isfinite(v) for v in values):
        raise DriftStateError(f"{what}: non-finite value", "corrupt")
    return values


class Fields:
    """Typed reads of one object of a checkpoint document.

    Anything missing, of another type (a boolean is never a number here) or
    out of range raises :class:`DriftStateError` with reason ``corrupt``, so a
    restored monitor holds only values of the types its code expects.
    """

    def __init__(self, document: object, what: str) -> None:
        if not isinstance(document, Mapping):
            raise DriftStateError(f"corrupt {what}: expected an object", "corrupt")
        self.document: Mapping[str, Any] = document
        self.what = what

    def fail(self, key: str, expected: str) -> DriftStateError:
        return DriftStateError(f"corrupt {self.what}: {key!r}: expected {expected}", "corrupt")

    def get(self, key: str) -> Any:
        if key not in self.document:
            raise DriftStateError(f"corrupt {self.what}: no {key!r}", "corrupt")
        return self.document[key]

    def integer(self, key: str, *, low: int | None = 0, nullable: bool = False) -> Any:
        value = self.get(key)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer")
        if low is not None and value < low:
            raise self.fail(key, f"an integer >= {low}")
        return value

    def text(self, key: str, choices: Sequence[str] | None = None) -> str:
        value = self.get(key)
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self.fail(key, f"one of {list(choices)}" if choices is not None else "a string")
        return value

    def number(self, key: str) -> float:
        return decode_number(self.get(key), f"{self.what}: {key!r}")

    def floats(self, key: str, *, limit: int) -> list[float]:
        return unpack_floats(self.get(key), f"{self.what}: {key!r}", limit=limit)

    def items(self, key: str) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list):
            raise self.fail(key, "a list")
        return value


def encode_number(value: float) -> float | str:
    """JSON has no infinities: they are written as strings (Page-Hinkley starts at +inf)."""
    return value if math.isfinite(value) else str(value)  # 'inf', '-inf' or 'nan'


def decode_number(value: object, what: str) -> float:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DriftStateError(f"corrupt {what}: expected a number", "corrupt")
    return float(value)


def check_config(stored: Mapping[str, Any], config: MonitorConfig | None) -> MonitorConfig:
    """The checkpoint's configuration, refused if it differs from ``config``."""
    if config is None:
        try:
            return MonitorConfig.model_validate(stored)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise DriftStateError(
                f"checkpoint configuration is no longer valid: {exc}", "config"
            ) from exc
    current = config.model_dump(mode="json")
    # settings added since the checkpoint was written take their defaults; a stored
    # configuration that no longer validates is compared as it is
    with contextlib.suppress(ValueError):
        stored = MonitorConfig.model_validate(stored).model_dump(mode="json")
    if current != stored:
        changes = ", ".join(
            f"{key}: {old!r} -> {new!r}" for key, old, new in _differences(stored, current)
        )
        raise DriftStateError(
            f"drift monitor {config.name!r}: the checkpoint was written under another "
            f"configuration ({changes}); start the monitor afresh or restore that configuration",
            "config",
        )
    return config


def _differences(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, object, object]]:
    out: list[tuple[str, object, object]] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif _normalise(a) != _normalise(b):
            out.append((f"{prefix}{key}", a, b))
    return out


def _normalise(value: object) -> object:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
