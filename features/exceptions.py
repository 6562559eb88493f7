"""Errors raised by the feature layer.

One root, :class:`FeatureError`, so callers can catch everything this package
raises with one clause.  The concrete errors also derive from ``ValueError``:
they are all "this value is not acceptable" problems, and code that already
catches ``ValueError`` (config loaders, the CLI) keeps working.

* :class:`FeatureDefinitionError`: a feature group definition is invalid.  It
  always names the group and the offending key, because the definitions come
  from a config file a human has to fix.
* :class:`FeatureSelectionError`: a read names features or windows the group
  does not have.
* :class:`CodecError`: a stored state blob does not decode (truncated, written
  for another definition, or corrupted).
"""

from __future__ import annotations

import difflib

from driftline.errors import DriftlineError


class FeatureError(DriftlineError):
    """Root of every error raised by :mod:`features`."""


class LayoutError(FeatureError, ValueError):
    """A key layout that cannot work (a shard count out of range, a brace in the prefix)."""


class FeatureDefinitionError(FeatureError, ValueError):
    """A feature group definition is invalid.

    ``str(error)`` reads ``feature group 'user_spend': windows[1]: <problem>``;
    the parts are also available as :attr:`group`, :attr:`key` and
    :attr:`problem` for tools that want to point at the config line.
    """

    def __init__(self, problem: str, *, group: str | None = None, key: str | None = None) -> None:
        self.problem = problem
        self.group = group
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"feature group {self.group!r}" if self.group else "feature group <unnamed>"
        if self.key:
            where = f"{where}: {self.key}"
        return f"{where}: {self.problem}"

    def within(self, group: str | None, key: str | None = None) -> FeatureDefinitionError:
        """The same problem, located in ``group`` (and under ``key`` if given).

        Lower layers (a :class:`~driftline.features.definitions.Window`) do not know which
        group they belong to; the group adds itself on the way up.
        """
        if key and self.key:
            key = f"{key}.{self.key}"
        return FeatureDefinitionError(self.problem, group=group, key=key or self.key)


class CodecError(FeatureError, ValueError):
    """Bytes that do not decode as the state of the given feature group."""


class FeatureSelectionError(FeatureError, ValueError):
    """A read asks for features or windows its group does not have (the message says which)."""


def did_you_mean(key: str, choices: tuple[str, ...]) -> str:
    """The hint a :class:`FeatureDefinitionError` gives for an unknown ``key``."""
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (expected one of {', '.join(choices)}){hint}"
