"""The dead-letter record: the original bytes, unchanged, plus headers that say why.

Header names follow Kafka Connect's dead-letter-queue convention
(``__connect.errors.*``) under a ``driftline.errors.`` prefix, so tools that
already read Connect DLQs map them one to one.  The contract is
``schemas/contracts/dead_letter.schema.json`` (the headers as a JSON object of
strings).  Original headers are kept, after ours.

======================================  ==========================================
header                                  value (UTF-8)
======================================  ==========================================
driftline.errors.topic                  topic the record was read from
driftline.errors.partition              its partition (decimal)
driftline.errors.offset                 its offset (decimal)
driftline.errors.stage                  size | deserialize | validate | extract | time
driftline.errors.reason                 reason code, e.g. ``missing_field``
driftline.errors.class.name             error class, e.g. ``ValidationError``
driftline.errors.exception.message      human explanation (at most 1 KiB)
driftline.errors.source                 driftline source name
driftline.errors.timestamp              wall time of rejection, epoch ms
======================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.exceptions import Rejection

PREFIX = "driftline.errors."
MAX_MESSAGE_BYTES = 1024

Headers = list[tuple[str, bytes]]


def dead_letter_headers(
    rejection: Rejection,
    *,
    source: str,
    topic: str,
    partition: int,
    offset: int,
    now_ms: int,
    original: Sequence[tuple[str, bytes]] | None = None,
) -> Headers:
    message = rejection.message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
    headers: Headers = [
        (PREFIX + "topic", topic.encode()),
        (PREFIX + "partition", str(partition).encode()),
        (PREFIX + "offset", str(offset).encode()),
        (PREFIX + "stage", rejection.stage.encode()),
        (PREFIX + "reason", rejection.reason.encode()),
        (PREFIX + "class.name", rejection.error_class.encode()),
        (PREFIX + "exception.message", message),
        (PREFIX + "source", source.encode()),
        (PREFIX + "timestamp", str(now_ms).encode()),
    ]
    if original:
        headers.extend((k, v) for k, v in original if not k.startswith(PREFIX))
    return headers


def parse_dead_letter_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """The ``driftline.errors.*`` headers as a dict without the prefix (for tools and tests)."""
    return {
        k[len(PREFIX) :]: v.decode("utf-8", "replace") for k, v in headers if k.startswith(PREFIX)
    }
