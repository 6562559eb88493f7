"""Checkpoint framing shared by :class:`~drift.monitor.Monitor` and
:class:`~drift.segmented.SegmentedMonitor`.

A checkpoint is ``magic + format byte + pickle(payload)``.  The payload is a
dict of builtins (and River's detector objects), never our own classes, so
renaming a module does not break old checkpoints; the format byte changes
with any incompatible change of the payload.  The payload carries the
configuration it was written under: restoring under another one is refused,
because thresholds, warm-up sizes and detector lists only make sense together.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from drift.config import MonitorConfig
from drift.exceptions import DriftStateError

#: Bump on any incompatible change of a checkpoint payload.
STATE_FORMAT = 1


def dump_payload(magic: bytes, payload: dict[str, Any]) -> bytes:
    return magic + bytes([STATE_FORMAT]) + pickle.dumps(payload, protocol=5)


def load_payload(data: bytes, magic: bytes, what: str) -> dict[str, Any]:
    """Check the header of a checkpoint and unpickle its payload."""
    if not isinstance(data, bytes | bytearray) or data[: len(magic)] != magic:
        raise DriftStateError(f"not a drift {what} checkpoint")
    version = data[len(magic)] if len(data) > len(magic) else -1
    if version != STATE_FORMAT:
        raise DriftStateError(
            f"drift {what} checkpoint format {version} is not supported "
            f"(this driftline reads format {STATE_FORMAT}); start the {what} afresh"
        )
    try:
        payload = pickle.loads(data[len(magic) + 1 :])
    except Exception as exc:  # unpickling garbage raises almost anything
        raise DriftStateError(f"corrupt drift {what} checkpoint: {exc!r}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise DriftStateError(f"corrupt drift {what} checkpoint: no configuration")
    return payload


def check_config(stored: Mapping[str, Any], config: MonitorConfig | None) -> MonitorConfig:
    """The checkpoint's configuration, refused if it differs from ``config``."""
    if config is None:
        try:
            return MonitorConfig.model_validate(stored)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise DriftStateError(f"checkpoint configuration is no longer valid: {exc}") from exc
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
            f"configuration ({changes}); start the monitor afresh or restore that configuration"
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
