"""The backfill's plan: which records it reads from the log and which from the topic."""

from __future__ import annotations

from driftline.features.registry import BackfillProgress
from driftline.streams.backfill_topic import plan_log_from, short_history


def test_the_log_is_read_from_its_first_offset_and_the_topic_below_it() -> None:
    tops = {0: 99, 1: 99, 2: 99, 3: 99}
    log_first = {0: 0, 1: 40, 2: 150}  # p2: the log starts after the mark; p3: not in it
    assert plan_log_from(tops, log_first, None) == {0: 0, 1: 40, 2: 100, 3: 100}


def test_a_resumed_run_keeps_its_plan() -> None:
    tops = {0: 99, 1: 99}
    # the first run read p0 from the topic; an archiver has filled the log from 0 since
    assert plan_log_from(tops, {0: 0, 1: 0}, {0: 100}) == {0: 100, 1: 0}


def test_history_is_short_only_when_neither_reaches_offset_zero_nor_from() -> None:
    assert not short_history(0, 5_000, 1_000)  # the topic still has its first record
    assert not short_history(40, 500, 1_000)  # records older than --from are held
    assert short_history(40, 5_000, 1_000)  # older ones were dropped
    assert short_history(40, None, 1_000)  # nothing held at all: it may have been dropped


def test_the_plan_survives_the_registry_record() -> None:
    done = BackfillProgress("running", 10, 20, 1, 2, 3, {0: 100, 7: 0}, {0: 12})
    back = BackfillProgress.parse(done.to_record())
    assert back == done
    assert "log_from" not in done.as_dict()  # what the registry shows stays as it was
    old = BackfillProgress("running", 10, 20, 1, 2, 3)
    assert BackfillProgress.parse(old.to_record()) == old
    assert (
        BackfillProgress.parse(
            b'{"state": "running", "events": 1, "total": 2, '
            b'"from_ms": 1, "started_ms": 2, "updated_ms": 3, '
            b'"log_from": [1]}'
        )
        is None
    )
