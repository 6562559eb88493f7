"""``driftline archive``: accepted events into the offline event log (see :mod:`.app`)."""
