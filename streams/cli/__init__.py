"""The ``driftline`` command line (``driftline.streams.cli:main``)."""

from driftline.streams.cli.main import main

__all__ = ["main"]
