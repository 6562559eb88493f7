"""Options shared by the ``driftline`` commands (``serve`` and ``registry`` too).

Plain click, no driftline imports: a program's command module (for example
:mod:`driftline.streams.serve.cli`) can use it without importing the main group.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["config_option"]

#: ``-c/--config FILE``, default ``driftline.yaml`` in the working directory.
config_option = click.option(
    "-c",
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("driftline.yaml"),
    show_default=True,
    help="config file (YAML)",
)
