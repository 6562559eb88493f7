"""Errors of the programs; the root is :class:`driftline.errors.DriftlineError`."""

from __future__ import annotations

import sys

from driftline.errors import DriftlineError, redact

#: Exit code of a command stopped by a DriftlineError: a user mistake (bad
#: config or contract, an unreachable service at start), said in one line.
EXIT_USAGE = 2


class ConfigError(DriftlineError):
    """The configuration is wrong; the message names the file, the key and what is expected.

    The CLI prints it without a traceback and exits with code 2.
    """


def exit_with(error: DriftlineError) -> None:
    """The one mapping of the error tree to the terminal: a redacted line, exit code 2."""
    # messages quote settings (URLs) and client errors: never their credentials
    print(f"driftline: {redact(str(error))}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


__all__ = ["EXIT_USAGE", "ConfigError", "DriftlineError", "exit_with"]
