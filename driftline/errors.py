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

Pure: no driftline imports, so every package (the pure ones too) may derive
from it.  The CLI maps the tree to exit codes in one place
(:func:`driftline.streams.errors.exit_with`).

Error messages quote settings and client errors, URLs included, so the one
redaction of printed text lives here too, where every package may reach it:
:func:`redact` turns the user info of a URL (``redis://user:pass@host``) into
``***`` and so do query parameters that carry secrets (``?password=...``).
It runs on every message the CLI prints, on settings errors, ``check-config``,
start-up and error log lines, and the schema-registry client's log lines.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#'\"]*@")
# user:password@host without a scheme (a Kafka bootstrap list, a bare authority)
_BARE_USERINFO = re.compile(r"(?:^|(?<=[\s'\",=(\[]))[^\s/@'\",=]+:[^\s/@'\",]*@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pass|pwd|token|secret|api_key|apikey|access_token)=)"
    r"[^&;#\s'\"]*",
    re.IGNORECASE,
)


class DriftlineError(Exception):
    """Root of every error driftline raises on purpose."""


def redact(text: str) -> str:
    """``text`` with URL credentials replaced by ``***``: safe to print or log."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    text = _BARE_USERINFO.sub("***@", text)
    return _SECRET_QUERY.sub(r"\g<key>***", text)


__all__ = ["DriftlineError", "redact"]
