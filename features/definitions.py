"""Feature group definitions: what to aggregate, over which windows, how finely.

A *feature group* belongs to one source (a Kafka topic of events) and one
entity key (``user_id``).  It declares

* ``values``: numeric fields and their aggregations, from
  :data:`AGGREGATIONS` (``count, sum, mean, min, max, std, var``);
* ``distinct``: categorical fields whose approximate distinct count is kept;
* ``last``: fields whose newest value (by event time) is kept;
* ``windows``: sliding event-time windows such as ``1m, 5m, 1h, 24h``, each
  with a *resolution* ``r``: the window is stored as ``W / r`` buckets.

Built from a plain dict (a YAML file) with :meth:`FeatureGroup.from_config`
(the key-by-key checks are :mod:`driftline.features.group_config`)::

    {"name": "user_spend", "version": 1, "source": "transactions",
     "entity_key": "user_id",
     "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
     "distinct": ["category"], "last": ["amount", "category"],
     "windows": ["1m", "5m", "1h", {"window": "24h", "resolution": "1h"}],
     "buckets_per_window": 60, "allowed_lateness": "30s", "future_tolerance": "5m"}

The resolution of a window is ``W / buckets_per_window`` (default 60 buckets)
unless given explicitly; it must be a whole number of ms that divides ``W``.
Windows with the same resolution share one bucket ring, which keeps as many
buckets as its longest window needs (:attr:`Layout.ring_buckets`).

Feature names are ``<field>_<aggregation>_<window>`` (``amount_std_1h``),
``<field>_distinct_count_<window>`` and ``<field>_last``; aggregations are
listed in the order of :data:`AGGREGATIONS` and windows from shortest to
longest, whatever order the config used, so names and their order are stable.

The *fingerprint* is the SHA-256 of a canonical JSON of everything that gives
the stored state or the features their meaning (name, version, source, entity
key, fields in declared order, aggregations, windows with resolutions,
lateness, future tolerance, and the state format): a changed fingerprint
means old state must not be read with the new definition.  Description, owner
and tags are documentation and are left out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from driftline.features.durations import format_duration, parse_duration
from driftline.features.exceptions import FeatureDefinitionError, did_you_mean

AGGREGATIONS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "std", "var")
DEFAULT_BUCKETS_PER_WINDOW = 60
DEFAULT_ALLOWED_LATENESS_MS = 30_000
DEFAULT_FUTURE_TOLERANCE_MS = 300_000
#: A guard against typos such as a 7d window at 1s resolution (604,800 buckets).
MAX_BUCKETS_PER_WINDOW = 10_000
#: Version of the state layout (buckets, summaries, sketches, codec).  Part of
#: the fingerprint: bump it when the layout changes.
STATE_FORMAT = 1

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding window of ``length_ms`` kept in buckets of ``resolution_ms``.

    ``name`` is how the window appears in feature names; it must spell
    ``length_ms`` (``"24h"`` or ``"1d"`` for 86,400,000).
    """

    name: str
    length_ms: int
    resolution_ms: int

    def __post_init__(self) -> None:
        for attr in ("length_ms", "resolution_ms"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise FeatureDefinitionError(f"{attr} must be a positive int, got {value!r}")
        try:
            named = parse_duration(self.name)
        except ValueError as exc:
            raise FeatureDefinitionError(f"window name: {exc}") from None
        if named != self.length_ms:
            raise FeatureDefinitionError(
                f"window name {self.name!r} does not spell its length "
                f"{format_duration(self.length_ms)!r}"
            )
        length, res = self.length_ms, self.resolution_ms
        if length % res:
            raise FeatureDefinitionError(
                f"resolution {format_duration(res)} does not divide window {self.name} "
                f"({length} ms is not a multiple of {res} ms)"
            )
        if length // res > MAX_BUCKETS_PER_WINDOW:
            raise FeatureDefinitionError(
                f"window {self.name} at resolution {format_duration(res)} needs "
                f"{length // res} buckets (at most {MAX_BUCKETS_PER_WINDOW}): "
                "choose a coarser resolution"
            )

    @property
    def n_buckets(self) -> int:
        """Buckets a read of this window covers: ``length_ms // resolution_ms``."""
        return self.length_ms // self.resolution_ms

    @classmethod
    def parse(
        cls,
        window: str,
        *,
        resolution: str | None = None,
        buckets_per_window: int = DEFAULT_BUCKETS_PER_WINDOW,
    ) -> Window:
        """``Window.parse("5m")`` (5 s buckets) or ``Window.parse("24h", resolution="1h")``."""
        try:
            length = parse_duration(window)
        except ValueError as exc:
            raise FeatureDefinitionError(str(exc)) from None
        if resolution is not None:
            try:
                res = parse_duration(resolution)
            except ValueError as exc:
                raise FeatureDefinitionError(str(exc), key="resolution") from None
            if res == 0:
                raise FeatureDefinitionError("resolution must be positive", key="resolution")
        else:
            if length % buckets_per_window:
                raise FeatureDefinitionError(
                    f"{window.strip()} / {buckets_per_window} buckets is not a whole number "
                    f"of ms: choose buckets_per_window dividing {length} or give this window "
                    'an explicit resolution ({"window": ..., "resolution": ...})'
                )
            res = length // buckets_per_window
        return cls(window.strip(), length, res)


class FeatureSpec(NamedTuple):
    """One output feature: how :func:`~driftline.features.engine.read_features` computes it."""

    name: str
    kind: Literal["value", "distinct", "last"]
    field: str
    #: position of the field in ``Layout.value_fields`` / ``distinct_fields``
    #: (``-1`` for ``last``)
    position: int
    aggregation: str
    window: Window | None


@dataclass(frozen=True, slots=True)
class Layout:
    """The engine-facing shape of a group, derived once at construction.

    ``ring_buckets[r]`` is ``n`` for the ring of resolution ``r``: the number
    of buckets it keeps, the largest ``n_buckets`` of its windows.  The Redis
    adapter needs it for pruning.
    """

    value_fields: tuple[str, ...]
    distinct_fields: tuple[str, ...]
    last_fields: tuple[str, ...]
    resolutions: tuple[int, ...]
    ring_buckets: Mapping[int, int]
    #: per resolution, its windows from shortest to longest
    ring_windows: tuple[tuple[int, tuple[Window, ...]], ...]
    features: tuple[FeatureSpec, ...]
    fingerprint: str


@dataclass(frozen=True, eq=False)
class FeatureGroup:
    """A validated feature group.  Immutable; equal when fingerprints are equal.

    Construct it directly (all values already typed) or from a config dict
    with :meth:`from_config`.  Aggregations are normalised to the order of
    :data:`AGGREGATIONS` and windows sorted by length; field order is kept as
    declared because the state layout (and the codec) follows it.  ``values``
    is a plain dict for cheap access: treat it as read-only, the derived
    :attr:`layout` is computed once.
    """

    name: str
    version: int
    source: str
    entity_key: str
    values: Mapping[str, tuple[str, ...]]
    distinct: tuple[str, ...]
    last: tuple[str, ...]
    windows: tuple[Window, ...]
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS
    description: str = ""
    owner: str = ""
    tags: tuple[str, ...] = ()
    layout: Layout = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _validate_and_normalise(self)
        object.__setattr__(self, "layout", _layout(self))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureGroup):
            return NotImplemented
        return self.layout.fingerprint == other.layout.fingerprint

    def __hash__(self) -> int:
        return hash(self.layout.fingerprint)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The distinct bucket widths in ms, ascending: one ring each."""
        return self.layout.resolutions

    @property
    def longest_window_ms(self) -> int:
        return self.windows[-1].length_ms

    @property
    def ttl_ms(self) -> int:
        """How long an entity's state stays useful after its last write.

        After ``longest window + allowed lateness`` no accepted event can fall
        in a window any more, so every aggregate has decayed to empty.
        """
        return self.longest_window_ms + self.allowed_lateness_ms

    def feature_names(self) -> tuple[str, ...]:
        """The names of the features, in the order
        :func:`~driftline.features.engine.read_features` returns them."""
        return tuple(spec.name for spec in self.layout.features)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the definition's meaning."""
        return self.layout.fingerprint

    def canonical(self) -> dict[str, Any]:
        """The JSON-able dict the fingerprint is computed from."""
        return {
            "format": STATE_FORMAT,
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "entity_key": self.entity_key,
            "values": [[f, list(aggs)] for f, aggs in self.values.items()],
            "distinct": list(self.distinct),
            "last": list(self.last),
            "windows": [[w.name, w.length_ms, w.resolution_ms] for w in self.windows],
            "allowed_lateness_ms": self.allowed_lateness_ms,
            "future_tolerance_ms": self.future_tolerance_ms,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FeatureGroup:
        """Validate a plain dict (from YAML/JSON) and build the group.

        Raises :class:`~driftline.features.exceptions.FeatureDefinitionError` naming the
        group and the key (``windows[2].resolution``) on the first problem.
        """
        from driftline.features.group_config import group_from_config

        return group_from_config(cls, config)


# ----------------------------------------------------------------- validation


def _validate_and_normalise(g: FeatureGroup) -> None:
    group = g.name if isinstance(g.name, str) and g.name else None

    def fail(key: str, problem: str) -> FeatureDefinitionError:
        return FeatureDefinitionError(problem, group=group, key=key)

    def setattr_(attr: str, value: object) -> None:
        object.__setattr__(g, attr, value)

    if not isinstance(g.name, str) or not _GROUP_NAME.fullmatch(g.name):
        raise fail("name", f"must be letters, digits, '_', '.', '-' (no ':'), got {g.name!r}")
    if not isinstance(g.version, int) or isinstance(g.version, bool) or g.version < 1:
        raise fail("version", f"must be an integer >= 1, got {g.version!r}")
    for attr in ("source", "entity_key"):
        value = getattr(g, attr)
        if not isinstance(value, str) or not value:
            raise fail(attr, f"must be a non-empty string, got {value!r}")
    for attr in ("allowed_lateness_ms", "future_tolerance_ms"):
        value = getattr(g, attr)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise fail(attr, f"must be a non-negative int (ms), got {value!r}")

    if not isinstance(g.values, Mapping):
        raise fail("values", f"must map field names to aggregations, got {g.values!r}")
    values: dict[str, tuple[str, ...]] = {}
    for fname, aggs in g.values.items():
        _check_field(fail, "values", fname)
        aggs = tuple(aggs)
        if not aggs:
            raise fail(f"values.{fname}", "needs at least one aggregation")
        for agg in aggs:
            if agg not in AGGREGATIONS:
                raise fail(
                    f"values.{fname}",
                    f"unknown aggregation {agg!r} (choose from {', '.join(AGGREGATIONS)})"
                    + (did_you_mean(agg, AGGREGATIONS) if isinstance(agg, str) else ""),
                )
        if len(set(aggs)) != len(aggs):
            raise fail(f"values.{fname}", f"an aggregation is listed twice: {list(aggs)}")
        values[fname] = tuple(a for a in AGGREGATIONS if a in aggs)
    setattr_("values", values)

    for attr in ("distinct", "last"):
        fields = tuple(getattr(g, attr))
        for fname in fields:
            _check_field(fail, attr, fname)
        if len(set(fields)) != len(fields):
            raise fail(attr, f"a field is listed twice: {list(fields)}")
        setattr_(attr, fields)
    if not values and not g.distinct and not g.last:
        raise fail("values", "the group computes nothing: declare values, distinct or last")

    windows = tuple(g.windows)
    if not windows:
        raise fail("windows", "at least one window is required")
    for i, w in enumerate(windows):
        if not isinstance(w, Window):
            raise fail(f"windows[{i}]", f"must be a Window, got {type(w).__name__}")
    by_length: dict[int, Window] = {}
    for w in windows:
        if w.length_ms in by_length:
            raise fail(
                "windows",
                f"{by_length[w.length_ms].name!r} and {w.name!r} are the same window",
            )
        by_length[w.length_ms] = w
    setattr_("windows", tuple(sorted(windows, key=lambda w: w.length_ms)))
    tags = tuple(g.tags)
    if not all(isinstance(t, str) for t in tags):
        raise fail("tags", "must be strings")
    setattr_("tags", tags)


def _check_field(
    fail: Callable[[str, str], FeatureDefinitionError], key: str, fname: object
) -> None:
    if not isinstance(fname, str) or not _FIELD.fullmatch(fname):
        raise fail(
            key, f"{fname!r} is not a usable field name (letters, digits and '_', not first digit)"
        )


def _layout(g: FeatureGroup) -> Layout:
    resolutions = tuple(sorted({w.resolution_ms for w in g.windows}))
    ring_windows = tuple(
        (r, tuple(w for w in g.windows if w.resolution_ms == r)) for r in resolutions
    )
    value_fields = tuple(g.values)
    features: list[FeatureSpec] = []
    for i, fname in enumerate(value_fields):
        for agg in g.values[fname]:
            for w in g.windows:
                features.append(FeatureSpec(f"{fname}_{agg}_{w.name}", "value", fname, i, agg, w))
    for j, fname in enumerate(g.distinct):
        for w in g.windows:
            features.append(
                FeatureSpec(f"{fname}_distinct_count_{w.name}", "distinct", fname, j, "", w)
            )
    for fname in g.last:
        features.append(FeatureSpec(f"{fname}_last", "last", fname, -1, "", None))
    seen: dict[str, FeatureSpec] = {}
    for spec in features:
        if spec.name in seen:
            raise FeatureDefinitionError(
                f"two features would both be named {spec.name!r} "
                f"(fields {seen[spec.name].field!r} and {spec.field!r}): rename a field",
                group=g.name,
                key=spec.kind if spec.kind != "value" else "values",
            )
        seen[spec.name] = spec
    canonical = json.dumps(g.canonical(), sort_keys=True, separators=(",", ":"))
    return Layout(
        value_fields=value_fields,
        distinct_fields=g.distinct,
        last_fields=g.last,
        resolutions=resolutions,
        ring_buckets={r: max(w.n_buckets for w in ws) for r, ws in ring_windows},
        ring_windows=ring_windows,
        features=tuple(features),
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
    )


# ----------------------------------------------------------------- versions

_GROUP_REF = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<version>[1-9][0-9]*))?")


def parse_group_ref(ref: str) -> tuple[str, int | None]:
    """``name`` -> ``(name, None)``; ``name@N`` -> ``(name, N)``.

    How a user names a group where several versions of it may be configured
    (a feature monitor's ``feature``, ``driftline training-set --features``):
    without ``@N``, the newest configured version (:func:`resolve_group`).
    Raises :class:`FeatureDefinitionError` for anything else.
    """
    match = _GROUP_REF.fullmatch(ref)
    if match is None:
        raise FeatureDefinitionError(
            f"{ref!r} is not a feature group reference (expected name or name@version)"
        )
    version = match["version"]
    return match["name"], None if version is None else int(version)


def newest_versions(groups: Iterable[FeatureGroup]) -> dict[str, FeatureGroup]:
    """Each configured group name's newest version, by name (in first-seen order)."""
    out: dict[str, FeatureGroup] = {}
    for group in groups:
        have = out.get(group.name)
        if have is None or group.version > have.version:
            out[group.name] = group
    return out


def group_refs(groups: Iterable[FeatureGroup]) -> dict[str, FeatureGroup]:
    """Every way to name a configured group: ``name@N`` for each version, and ``name``
    for the newest version of that name."""
    listed = list(groups)
    out = {f"{g.name}@{g.version}": g for g in listed}
    out.update(newest_versions(listed))
    return out


def resolve_group(groups: Iterable[FeatureGroup], ref: str) -> FeatureGroup | None:
    """The group ``ref`` (``name`` or ``name@N``) names among ``groups``; ``None`` if none."""
    try:
        parse_group_ref(ref)
    except FeatureDefinitionError:
        return None
    return group_refs(groups).get(ref)
