"""Adapters to the outside world: Redis online store, Kafka dead-letter and
alert producers, Prometheus metrics.  Thin on purpose: each sits behind a
small Protocol with an in-memory double for unit tests of the logic above it."""
