"""The root of driftline's exception hierarchy."""

from __future__ import annotations


class DriftlineError(Exception):
    """Root of every driftline error."""


class ConfigError(DriftlineError):
    """The configuration is wrong; the message names the file, the key and what is expected.

    The CLI prints it without a traceback and exits with code 2.
    """
