"""The offline log's writer on a real Delta table: types, positions, and its fence.

A row read back is the event that was written (what the window engine would
see of it), whatever the contract's types; the per-partition offsets of the
commits are where reading resumes; and a writer that is behind another is
refused, before its commit and by Delta's own conflict check during it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas.parser import ParsedEvent
from driftline.sinks.exceptions import PermanentError
from driftline.sinks.offline_log import LogFenceError, LogLayout, OfflineLog, day_of

T0 = 1_764_633_600_000  # 2025-12-02T00:00Z
DAY = 86_400_000
LAYOUT = LogLayout.from_declared(
    {
        "amount": ["number"],
        "n": ["integer|null"],
        "name": ["string"],
        "flag": ["boolean"],
        "blob": ["object"],
        "anything": ["any"],
    }
)


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def recs(n: int, partition: int = 0, start: int = 0) -> list[Rec]:
    return [Rec("tx", partition, start + i, T0 + i) for i in range(n)]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
field_names = st.sampled_from(["amount", "n", "name", "flag", "blob", "anything", "other"])


def what_the_engine_sees(data: dict[str, object]) -> dict[str, object]:
    """Absent and null are alike to the window engine; a number column holds floats."""
    out: dict[str, object] = {}
    for k, v in data.items():
        if v is None:
            continue
        if k == "amount" and type(v) is int and abs(v) <= 1 << 53:
            v = float(v)
        out[k] = v
    return out


def fits(name: str, v: object) -> bool:
    """Whether a value is kept by its scalar column (else it is in ``_extra``)."""
    if name == "amount":
        return type(v) is float
    if name == "n":
        return type(v) is int and -(1 << 63) <= v < (1 << 63)
    if name == "name":
        return type(v) is str
    if name == "flag":
        return type(v) is bool
    return False


@settings(max_examples=40, deadline=None)
@given(st.lists(st.dictionaries(field_names, values, max_size=7), min_size=1, max_size=20))
def test_rows_read_back_are_the_events_written(
    tmp_path_factory: pytest.TempPathFactory, datas: list[dict[str, object]]
) -> None:
    root = tmp_path_factory.mktemp("log")
    log = OfflineLog(str(root))
    events = [ParsedEvent(f"e{i % 3}", T0 + 3_600_000 * 20 * i, d) for i, d in enumerate(datas)]
    log.append("tx", LAYOUT.to_table(events, recs(len(events))), {("tx", 0): (-1, len(events) - 1)})
    table = log.scan("tx").sort("_offset").collect()
    back = list(LAYOUT.events(table.to_arrow()))
    assert [(e.entity, e.event_time_ms) for e in back] == [
        (e.entity, e.event_time_ms) for e in events
    ]
    for got, want in zip(back, events, strict=True):
        assert what_the_engine_sees(got.data) == what_the_engine_sees(want.data)
    # the scalar columns alone (the fast path of a training set): what fits them
    scalar = ["amount", "n", "name", "flag"]
    some = list(LAYOUT.events(table.select([*scalar, "_entity", "_event_time"]).to_arrow()))
    for got, want in zip(some, events, strict=True):
        expected = {k: v for k, v in what_the_engine_sees(want.data).items() if fits(k, v)}
        assert what_the_engine_sees(got.data) == expected
    assert table["event_date"].to_list() == [day_of(e.event_time_ms) for e in events]
    assert table["_offset"].to_list() == list(range(len(events)))


def test_positions_and_watermarks_come_from_the_commits(tmp_path: Path) -> None:
    log = OfflineLog(str(tmp_path))
    assert not log.exists("tx") and log.positions("tx", "tx", [0, 1]) == {0: -1, 1: -1}
    assert log.watermarks("tx", "tx", [0]) == {0: None}
    events = [
        ParsedEvent("a", T0 + 50, {"amount": 1.0}),
        ParsedEvent("a", T0 + 10, {"amount": 2.0}),
    ]
    log.append("tx", LAYOUT.to_table(events, recs(2)), {("tx", 0): (-1, 1)})
    # a partition whose records were all refused still moves: an empty commit
    log.append("tx", LAYOUT.to_table([], []), {("tx", 1): (-1, 41)})
    assert log.positions("tx", "tx", [0, 1, 2]) == {0: 1, 1: 41, 2: -1}
    # the newest, not the last; none for a partition whose records were all refused
    assert log.watermarks("tx", "tx", [0, 1]) == {0: T0 + 50, 1: None}


def test_a_writer_behind_another_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    log = OfflineLog(str(tmp_path))
    one = [ParsedEvent("a", T0, {"amount": 1.0})]
    log.append("tx", LAYOUT.to_table(one, recs(1)), {("tx", 0): (-1, 0)})
    with pytest.raises(LogFenceError, match="expected -1"):
        log.append("tx", LAYOUT.to_table(one, recs(1)), {("tx", 0): (-1, 0)})
    assert DeltaTable(str(tmp_path / "tx")).version() == 0


def test_a_commit_racing_another_of_the_same_partition_is_refused(tmp_path: Path) -> None:
    """The check passes on a stale snapshot; Delta's conflict check refuses the commit."""
    log = OfflineLog(str(tmp_path))
    one = [ParsedEvent("a", T0, {"amount": 1.0})]
    log.append("tx", LAYOUT.to_table(one, recs(1)), {("tx", 0): (-1, 0)})
    stale = DeltaTable(str(tmp_path / "tx"))
    log.append("tx", LAYOUT.to_table(one, recs(1, start=1)), {("tx", 0): (0, 1)})  # the other
    racing = OfflineLog(str(tmp_path))
    racing._table = lambda source: stale  # type: ignore[method-assign]
    with pytest.raises(LogFenceError):
        racing.append("tx", LAYOUT.to_table(one, recs(1, start=1)), {("tx", 0): (0, 1)})
    assert log.scan("tx").collect().height == 2
    # another partition commits beside it without a conflict
    other = OfflineLog(str(tmp_path))
    other.append("tx", LAYOUT.to_table(one, recs(1, partition=1)), {("tx", 1): (-1, 0)})
    assert log.positions("tx", "tx", [0, 1]) == {0: 1, 1: 0}


def test_contract_fields_named_like_the_logs_own_columns_are_refused() -> None:
    with pytest.raises(PermanentError, match="_offset"):
        LogLayout.from_declared({"_offset": ["integer"], "amount": ["number"]})


def test_compaction_keeps_the_rows_and_where_each_partition_stands(tmp_path: Path) -> None:
    log = OfflineLog(str(tmp_path))
    for i in range(12):  # twelve small commits over two dates, as a live archiver makes them
        events = [
            ParsedEvent("a", T0 + i, {"amount": float(i)}),
            ParsedEvent("b", T0 + DAY + i, {}),
        ]
        log.append(
            "tx", LAYOUT.to_table(events, recs(2, start=2 * i)), {("tx", 0): (2 * i - 1, 2 * i + 1)}
        )
    before = log.scan("tx").sort("_offset").collect()
    files = len(DeltaTable(str(tmp_path / "tx")).file_uris())
    removed, added = log.compact("tx")
    assert (removed, added) == (files, 2)  # one file per date
    assert len(DeltaTable(str(tmp_path / "tx")).file_uris()) == 2
    assert log.scan("tx").sort("_offset").collect().equals(before)
    assert log.positions("tx", "tx", [0]) == {0: 23}
    # and appends go on after it, fenced as before
    with pytest.raises(LogFenceError):
        log.append("tx", LAYOUT.to_table([], []), {("tx", 0): (20, 30)})
    log.append("tx", LAYOUT.to_table([], []), {("tx", 0): (23, 30)})
