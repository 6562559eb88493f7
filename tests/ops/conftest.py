"""Notes the ops tests leave for the terminal summary (e.g. queries that returned nothing)."""

from __future__ import annotations

import pytest

#: Lines shown under "ops notes" at the end of the run.
NOTES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if NOTES:
        terminalreporter.section("ops notes")
        for line in NOTES:
            terminalreporter.write_line(line)
