"""Every verdict on one partition's records, in the order the worker gives them.

The contract (:func:`~driftline.streams.worker.records.classify`), then the
data-quality checks (routed violations become rejections), then event time
(late or future).  What is left, ``Classified.valid``, is exactly what the
features count.  The worker (:mod:`.pipeline`) and the offline log's writer
(``driftline archive``, :mod:`driftline.streams.archive`) both call
:func:`judge`, so the log holds the events the features counted: the verdicts
are fixed properties of the partition's history (see
:func:`~driftline.streams.worker.event_time.judge_event_time`), given the
same watermark at the same offset.
"""

from __future__ import annotations

from collections.abc import Sequence

from driftline.drift.quality import QualityChecker
from driftline.schemas import REASONS, EventParser, Rejection
from driftline.streams.worker.event_time import judge_event_time
from driftline.streams.worker.records import Classified, RawRecord, classify


def judge(
    parser: EventParser,
    quality: QualityChecker | None,
    partition: int,
    records: Sequence[RawRecord],
    watermark_ms: int | None,
    *,
    judge_time: bool,
    allowed_lateness_ms: int,
    future_tolerance_ms: int,
) -> tuple[Classified, int | None]:
    """The verdicts on ``records`` (one partition, offset order) and the next watermark.

    ``judge_time`` is false where nothing is aggregated (a source without
    feature groups): no event is late then, and the watermark stays.
    """
    result = classify(parser, records)
    if quality is not None and result.valid:
        check_quality(quality, partition, result)
    if not judge_time or not records:
        return result, watermark_ms
    judged = judge_event_time(
        result.valid,
        result.valid_records,
        watermark_ms,
        allowed_lateness_ms=allowed_lateness_ms,
        future_tolerance_ms=future_tolerance_ms,
    )
    if judged.rejected:
        refused = {r.offset for r, _ in judged.rejected}
        kept = [
            (e, r)
            for e, r in zip(result.valid, result.valid_records, strict=True)
            if r.offset not in refused
        ]
        result.valid = [e for e, _ in kept]
        result.valid_records = [r for _, r in kept]
        result.rejected = sorted(result.rejected + judged.rejected, key=lambda p: p[0].offset)
    return result, judged.watermark_ms


def check_quality(quality: QualityChecker, partition: int, result: Classified) -> None:
    """Count the batch's data-quality findings; move routed violations to ``rejected``."""
    records = result.valid_records
    report = quality.check(partition, result.valid, [r.offset for r in records])
    result.quality = report
    if not report.refused:
        return
    refused = {i for i, _, _ in report.refused}
    result.rejected = sorted(
        result.rejected
        + [
            (records[i], Rejection(REASONS[reason], reason, message, "QualityCheck"))
            for i, reason, message in report.refused
        ],
        key=lambda pair: pair[0].offset,
    )
    result.valid = [e for i, e in enumerate(result.valid) if i not in refused]
    result.valid_records = [r for i, r in enumerate(records) if i not in refused]
