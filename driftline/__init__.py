"""driftline: streaming features and drift detection on Kafka.

One import name for the whole product.  The subpackages are the project's
top-level folders:

* :mod:`driftline.schemas`: event contracts (JSON Schema, Avro), parsing, dead-letter records;
* :mod:`driftline.features`: feature definitions and the sliding-window engine (pure);
* :mod:`driftline.drift`: drift monitors and data-quality checks (pure);
* :mod:`driftline.sinks`: the adapters (Redis online store, Kafka output, Prometheus);
* :mod:`driftline.streams`: the programs (worker, ``serve``, local stack, CLI).

For model-serving code, :class:`FeatureClient` (and :class:`AsyncFeatureClient`)
read online features over Redis or ``driftline serve``::

    from driftline import FeatureClient

    with FeatureClient.redis("redis://redis:6379/0") as client:
        [row] = client.get_online_features(["user-00042"], ["user_spend:amount_mean_5m"])
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("driftline")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"

_CLIENT = ("AsyncFeatureClient", "FeatureClient", "FeatureClientError", "OnlineFeatures")


def __getattr__(name: str) -> Any:
    # imported on first use: ``import driftline`` stays cheap (no Redis, no aiohttp)
    if name in _CLIENT:
        from driftline.sinks import feature_client

        return getattr(feature_client, name)
    if name == "training_set":
        from driftline.streams.training import training_set

        return training_set
    raise AttributeError(f"module 'driftline' has no attribute {name!r}")


if TYPE_CHECKING:
    from driftline.sinks.feature_client import (
        AsyncFeatureClient,
        FeatureClient,
        FeatureClientError,
        OnlineFeatures,
    )
    from driftline.streams.training import training_set

__all__ = [
    "AsyncFeatureClient",
    "FeatureClient",
    "FeatureClientError",
    "OnlineFeatures",
    "__version__",
    "training_set",
]
