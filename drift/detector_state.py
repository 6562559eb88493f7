"""The state of River's detectors as plain data, and detectors rebuilt from it.

A checkpoint must not carry objects (unpickling runs code), so each detector
is written as the few numbers that make it what it is; its parameters are not
written at all, they come from the monitor's configuration, which the
checkpoint carries and which must match on restore.  Restoring builds a fresh
detector from the configuration and puts those numbers back: the detector
then continues bit for bit where the saved one stopped.

``page_hinkley`` (pure Python in River) keeps the running mean of its input
and four cumulative sums::

    {"n": 812.0, "mean": 0.013, "sum_increase": -3.1, "sum_decrease": 4.2,
     "min_increase": -9.7, "max_decrease": 7.5, "drift_detected": false}

``adwin`` (Rust in River >= 0.26) keeps its window as an exponential
histogram: bucket row ``i`` holds up to ``max_buckets`` entries, each the
total and variance of ``2**i`` values, plus running totals and counters::

    {"total": ..., "variance": ..., "width": 812.0, "total_width": ..., "n_buckets": ...,
     "max_n_buckets": ..., "tick": 812, "n_detections": 0, "drift_detected": false,
     "rows": [[[total, variance], ...], ...]}          row i: entries of 2**i values

River exposes ADWIN's state only as the opaque bytes of its Rust struct
(``__getstate__``), which panic the process when malformed.  So the bytes
are read field by field here (the struct's layout, little-endian, fixed-width
integers, u64 lengths) and, on restore, written back only from validated
numbers: checkpoint data never reaches River's decoder unchecked.  The layout
is River's private detail, hence the pin to one River minor version and the
layout check on every save.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from driftline.drift.config import DetectorName, MonitorConfig
from driftline.drift.detectors import DriftModel, build_model
from driftline.drift.exceptions import DriftStateError
from driftline.drift.state import Fields, decode_number, encode_number

# AdaptiveWindowing: delta f64, clock i32, max_buckets u64, min_window_length f64,
# grace_period f64, total f64, variance f64, width f64, total_width f64,
# n_buckets i32, max_n_buckets i32, tick i32, n_detections i32, then the
# bucket list (u64 length; per bucket: max_size u64, current_idx u64, totals
# and variances as u64 length + f64s, max_size + 1 slots each); then the Python
# wrapper's copy of the parameters: delta f64, clock i32, max_buckets u64,
# min_window_length i32, grace_period i32.
_HEAD = struct.Struct("<diQddddddiiii")
_TAIL = struct.Struct("<diQii")
_U64 = struct.Struct("<Q")
_ADWIN_FLOATS = ("total", "variance", "width", "total_width")
_ADWIN_INTS = ("n_buckets", "max_n_buckets", "tick", "n_detections")
_I32_MAX = 2**31 - 1
#: Bucket rows of 2**i values each; 64 covers any window a process can hold.
_MAX_ROWS = 64


def model_state(detector: DetectorName, model: DriftModel) -> dict[str, Any]:
    """The numbers that, with the configuration, make ``model`` what it is."""
    m: Any = model  # River's detectors are untyped
    if detector == "page_hinkley":
        return {
            "n": m._x_mean.n,
            "mean": encode_number(m._x_mean._mean),
            "sum_increase": encode_number(m._sum_increase),
            "sum_decrease": encode_number(m._sum_decrease),
            "min_increase": encode_number(m._min_increase),
            "max_decrease": encode_number(m._max_decrease),
            "drift_detected": bool(m._drift_detected),
        }
    state = _read_adwin(m._helper.__getstate__(), m)
    state["drift_detected"] = bool(m._drift_detected)
    return state


def restore_model(
    detector: DetectorName, config: MonitorConfig, state: object, what: str
) -> DriftModel:
    """A detector built from ``config`` carrying ``state`` (:func:`model_state`)."""
    fields = Fields(state, what)
    model = build_model(detector, config)
    m: Any = model
    detected = fields.get("drift_detected")
    if not isinstance(detected, bool):
        raise fields.fail("drift_detected", "true or false")
    if detector == "page_hinkley":
        n = fields.number("n")
        if not (math.isfinite(n) and n >= 0):
            raise fields.fail("n", "a count")
        m._x_mean.n = n
        m._x_mean._mean = fields.number("mean")
        m._sum_increase = fields.number("sum_increase")
        m._sum_decrease = fields.number("sum_decrease")
        m._min_increase = fields.number("min_increase")
        m._max_decrease = fields.number("max_decrease")
    else:
        data, width = _write_adwin(fields, config)
        m._helper.__setstate__(data)
        if m._helper.get_width() != width:  # what was written is what River holds
            raise DriftStateError(f"corrupt {what}: ADWIN state did not round-trip", "corrupt")
    m._drift_detected = detected
    return model


def _read_adwin(data: bytes, model: Any) -> dict[str, Any]:
    """Parse River's ADWIN bytes; a layout other than the one above is a River upgrade."""
    try:
        head = _HEAD.unpack_from(data, 0)
        offset = _HEAD.size
        (rows,) = _U64.unpack_from(data, offset)
        offset += _U64.size
        buckets: list[list[list[float | str]]] = []
        for _ in range(rows):
            size, used = struct.unpack_from("<QQ", data, offset)
            offset += 16
            columns = []
            for _column in range(2):
                (length,) = _U64.unpack_from(data, offset)
                offset += _U64.size
                columns.append(struct.unpack_from(f"<{length}d", data, offset))
                offset += 8 * length
            totals, variances = columns
            if size != model.max_buckets or len(totals) != size + 1 or used > size:
                raise ValueError("unexpected bucket")
            if any(totals[used:]) or any(variances[used:]):
                raise ValueError("unused bucket slots are not empty")
            pairs = zip(totals[:used], variances[:used], strict=True)
            buckets.append([[encode_number(t), encode_number(v)] for t, v in pairs])
        tail = _TAIL.unpack_from(data, offset)
        offset += _TAIL.size
        params = (
            model.delta,
            model.clock,
            model.max_buckets,
            model.min_window_length,
            model.grace_period,
        )
        if offset != len(data) or head[:5] != params or tail != params:
            raise ValueError("unexpected parameters or trailing bytes")
    except (struct.error, ValueError) as exc:
        raise RuntimeError(
            f"River's ADWIN state has a layout driftline does not know ({exc}); "
            "driftline supports the River versions its package metadata allows"
        ) from exc
    floats = zip(_ADWIN_FLOATS, head[5:9], strict=True)
    state: dict[str, Any] = {key: encode_number(value) for key, value in floats}
    state.update(zip(_ADWIN_INTS, head[9:13], strict=True))
    state["rows"] = buckets
    return state


def _write_adwin(fields: Fields, config: MonitorConfig) -> tuple[bytes, float]:
    """River's ADWIN bytes from validated numbers, and the window's width."""
    p = config.adwin
    floats = [fields.number(key) for key in _ADWIN_FLOATS]
    ints = [fields.integer(key) for key in _ADWIN_INTS]
    if any(value > _I32_MAX for value in ints):
        raise DriftStateError(f"corrupt {fields.what}: counter out of range", "corrupt")
    rows = fields.items("rows")
    if not 1 <= len(rows) <= _MAX_ROWS:
        raise fields.fail("rows", f"1 to {_MAX_ROWS} bucket rows")
    out = [
        _HEAD.pack(
            p.delta,
            p.clock,
            p.max_buckets,
            float(p.min_window_length),
            float(p.grace_period),
            *floats,
            *ints,
        ),
        _U64.pack(len(rows)),
    ]
    width = 0
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) > p.max_buckets:
            raise fields.fail(f"rows[{i}]", f"at most {p.max_buckets} entries")
        totals = [0.0] * (p.max_buckets + 1)
        variances = [0.0] * (p.max_buckets + 1)
        for j, entry in enumerate(row):
            if not isinstance(entry, list) or len(entry) != 2:
                raise fields.fail(f"rows[{i}][{j}]", "[total, variance]")
            totals[j] = decode_number(entry[0], f"{fields.what}: rows[{i}][{j}]")
            variances[j] = decode_number(entry[1], f"{fields.what}: rows[{i}][{j}]")
        width += len(row) << i
        out.append(struct.pack("<QQ", p.max_buckets, len(row)))
        for column in (totals, variances):
            out.append(_U64.pack(len(column)) + struct.pack(f"<{len(column)}d", *column))
    out.append(_TAIL.pack(p.delta, p.clock, p.max_buckets, p.min_window_length, p.grace_period))
    if floats[2] != width:  # the window's width is the number of values its buckets hold
        raise fields.fail("width", f"the {width} values its buckets hold")
    return b"".join(out), floats[2]
