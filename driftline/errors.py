"""The root of driftline's errors: one tree, a family per package.

::

    DriftlineError
    ├── ConfigError       streams: a user's configuration (CLI exit 2)
    ├── TopicError        streams: broker topics at start-up (exit 2)
    ├── EmbeddedError     streams: the local broker and Redis (exit 2)
    ├── SchemaError       schemas: a contract file (exit 2)
    ├── InvalidEvent      schemas: one bad record (dead-lettered, never raised out)
    ├── FeatureError      features: FeatureDefinitionError, CodecError
    ├── DriftError        drift: DriftConfigError, DriftStateError
    └── SinkError         sinks: client errors, classified at the adapters
        ├── TransientError    retried with backoff
        └── PermanentError    never retried: the worker fails loudly
            (RecordTooLarge, EffectFailed, FeatureVersionConflict)

Pure: no imports, so every package (the pure ones too) may derive from it.
The CLI maps the tree to exit codes in one place (``driftline.streams.cli``).
"""

from __future__ import annotations


class DriftlineError(Exception):
    """Root of every error driftline raises on purpose."""


__all__ = ["DriftlineError"]
