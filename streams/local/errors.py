"""The local stack's error: an embedded server could not be found, started, or used."""

from __future__ import annotations

from driftline.errors import DriftlineError

__all__ = ["EmbeddedError"]


class EmbeddedError(DriftlineError):
    """An embedded server could not be found, started, or used."""
