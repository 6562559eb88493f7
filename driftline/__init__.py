"""driftline: streaming features and drift detection on Kafka.

One import name for the whole product.  The subpackages are the project's
top-level folders:

* :mod:`driftline.schemas`: event contracts (JSON Schema, Avro), parsing, dead-letter records;
* :mod:`driftline.features`: feature definitions and the sliding-window engine (pure);
* :mod:`driftline.drift`: drift monitors and data-quality checks (pure);
* :mod:`driftline.sinks`: the adapters (Redis online store, Kafka output, Prometheus);
* :mod:`driftline.streams`: the programs (worker, ``serve``, local stack, CLI).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("driftline")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
