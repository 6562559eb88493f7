"""Drift detector wrappers and alert logic (pure: no Kafka, Redis or Faust).

The River-based monitors land with the drift issue (#4).
"""
