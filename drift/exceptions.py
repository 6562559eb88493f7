"""Errors raised by the drift package.

One root, :class:`DriftError`, so a caller can catch everything this package
raises in one clause.  Both concrete errors are also :class:`ValueError`\\ s:
they are about a value handed in from outside (a configuration mapping, a
checkpoint), never about the data stream itself.  Bad *data* (NaN, infinity,
a missing field) is never an exception here: it is skipped and counted.
"""

from __future__ import annotations

from driftline.errors import DriftlineError


class DriftError(DriftlineError):
    """Root of every error raised by :mod:`drift`."""


class DriftConfigError(DriftError, ValueError):
    """A monitor configuration is invalid.

    The message names the monitor and the offending key (dotted for nested
    keys, e.g. ``adwin.delta``) so the CLI can print it as is.
    """

    def __init__(self, monitor: str, key: str, message: str) -> None:
        super().__init__(f"drift monitor {monitor!r}: {key}: {message}")
        self.monitor = monitor
        self.key = key
        self.message = message


class DriftStateError(DriftError, ValueError):
    """A checkpoint cannot be restored: not a monitor state, an unknown format
    version, or written under a different configuration.

    The worker's answer is to start the monitor afresh (a new warm-up) and log
    this message; silently mixing a checkpoint with another configuration
    would make the detectors' thresholds meaningless.

    ``reason`` says which, as a short label for metrics: ``pickle`` (a
    checkpoint of the old pickle format, refused unread), ``unreadable`` (not
    a checkpoint document at all), ``format`` (another format version),
    ``corrupt`` (a field missing, of the wrong type or inconsistent) or
    ``config`` (written under another configuration).
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason
