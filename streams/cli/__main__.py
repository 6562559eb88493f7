"""``python -m driftline.streams.cli``: the ``driftline`` command."""

from driftline.streams.cli.main import main

main()
