"""Window aggregation engine and feature definitions (pure: no Kafka, Redis or Faust).

The sliding-window engine lands with the features issue (#3).
"""
