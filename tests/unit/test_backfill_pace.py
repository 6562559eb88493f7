"""``driftline backfill --max-rate``: the pace is kept from the first write, not from the start.

The waits before the first write (for the workers' live marks, for the
archiver, the log scan) are no credit for a burst afterwards.  The clock is
a fake: nothing here depends on the machine's speed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from driftline.streams import backfill as module


async def test_waiting_before_the_first_write_is_no_credit_for_a_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    # the module's own clock and sleep (the event loop keeps the real ones)
    monkeypatch.setattr(module, "asyncio", SimpleNamespace(sleep=sleep))
    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(module, "declared_types", lambda parser: {})
    settings = SimpleNamespace(
        sources=[SimpleNamespace(name="tx", topic="tx")], offline=SimpleNamespace(path="log")
    )
    job = module._Job(
        settings,  # type: ignore[arg-type]
        SimpleNamespace(parsers={"tx": None}),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        SimpleNamespace(name="spend", version=2, source="tx"),  # type: ignore[arg-type]
        0,
        from_given=False,
        max_entities=500,
        max_rate=1_000.0,
        say=print,
        clock=lambda: 0,
    )
    now[0] += 300.0  # five minutes waiting for the live marks and the archiver
    await job._pace(500)  # the first write starts the clock
    assert slept == []
    now[0] += 0.5  # the next write took half a second
    await job._pace(2_000)  # 2,000 events at 1,000/s take 2 s: wait the 1.5 s left
    assert slept == [1.5]
    await job._pace(1_000)
    assert slept == [1.5, 1.0]
