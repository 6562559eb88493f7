"""Monitors of the data: drift and quality (pure: no Kafka, Redis or Faust).

The pieces (modules of :mod:`driftline.drift`), in the order a value meets them:

* ``config``          one validated, frozen :class:`MonitorConfig` per monitor;
* ``samples``         the monitored values a source batch sends its monitor, and
                      their values-topic form;
* ``segmented``       routes a value to its segment's monitor (bounded);
* ``reference``       the warm-up sample and the normal scores against it;
* ``detectors``       River's Page-Hinkley and ADWIN on the scores;
* ``monitor``         warm-up, incidents (opened / updated / closed), checkpoints;
* ``alerts``          the :class:`Alert` record and its JSON
                      (``schemas/contracts/drift_alert.schema.json``);
* ``state``           checkpoint documents (JSON, format version, configuration check);
* ``detector_state``  River detectors as plain numbers and back;
* ``quality``         data-quality checks of a source: completeness, uniqueness,
                      ranges and domains (counted, optionally dead-lettered);
* ``recent_ids``      the bounded memory of recent ids behind the uniqueness check.

``bench/drift_quality.py`` measures false alarms and detection delays of the
defaults; the numbers are in its docstring.
"""

from driftline.drift.alerts import Alert, AlertKind, AlertReason, Severity
from driftline.drift.config import (
    DEFAULT_DETECTORS,
    DETECTORS,
    STATISTICS,
    AdwinParams,
    MonitorConfig,
    PageHinkleyParams,
)
from driftline.drift.exceptions import DriftConfigError, DriftError, DriftStateError
from driftline.drift.monitor import ALL_SEGMENT, Monitor
from driftline.drift.segmented import MISSING_SEGMENT, OTHER_SEGMENT, SegmentedMonitor
from driftline.drift.stats import Stats

__all__ = [
    "ALL_SEGMENT",
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "MISSING_SEGMENT",
    "OTHER_SEGMENT",
    "STATISTICS",
    "AdwinParams",
    "Alert",
    "AlertKind",
    "AlertReason",
    "DriftConfigError",
    "DriftError",
    "DriftStateError",
    "Monitor",
    "MonitorConfig",
    "PageHinkleyParams",
    "SegmentedMonitor",
    "Severity",
    "Stats",
]
