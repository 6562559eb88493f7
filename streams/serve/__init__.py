"""The serving program: ``driftline serve`` (HTTP over the online store) and the registry."""
