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
driftline.errors.truncated              only when cut to fit: what was cut
                                        (``value``, ``key``, ``headers``, comma-separated)
driftline.errors.original.value.size    only when cut: the original value's size in bytes
driftline.errors.original.key.size      only when cut: the original key's size in bytes
======================================  ==========================================

A dead letter must fit in one produce request (``kafka.max_request_size``):
a value over it (a 100 MB record refused as ``oversize``) is written with its
first bytes only, never dropped and never retried for ever.  The headers say
so, and the coordinates (topic, partition, offset) point at the whole record
while the source topic retains it.
"""

from __future__ import annotations

from collections.abc import Sequence

from driftline.schemas.exceptions import Rejection

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


#: Bytes a record costs beyond its key, value and header bytes (record and
#: batch framing, varints), over-estimated so the estimate never falls short.
RECORD_OVERHEAD = 512
HEADER_OVERHEAD = 16
#: A key is cut to this many bytes when it alone does not fit.
MAX_KEY_BYTES = 1024
TRUNCATED_HEADER = PREFIX + "truncated"
ORIGINAL_VALUE_SIZE = PREFIX + "original.value.size"
ORIGINAL_KEY_SIZE = PREFIX + "original.key.size"
_MARKS = frozenset({TRUNCATED_HEADER, ORIGINAL_VALUE_SIZE, ORIGINAL_KEY_SIZE})


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """An upper bound of the bytes one record takes in a produce request."""
    size = RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, data in headers:
        size += HEADER_OVERHEAD + len(name.encode()) + len(data or b"")  # a null header value
    return size


def fit_dead_letter(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    limit: int,
) -> tuple[bytes | None, bytes | None, Headers]:
    """The dead letter cut to at most ``limit`` bytes (see :func:`record_size`).

    Kept whole when it fits.  Otherwise the original headers go first (ours
    stay), then the key is cut to :data:`MAX_KEY_BYTES`, then the value to
    what is left (possibly nothing); ``driftline.errors.truncated`` and the
    original sizes are added.
    """
    headers = list(headers)
    if record_size(key, value, headers) <= limit:
        return key, value, headers
    # Cut again (a broker that refused the cut record): the first sizes stay.
    earlier = {k: v for k, v in headers if k in _MARKS}
    headers = [(k, v) for k, v in headers if k not in _MARKS]
    cut = [c for c in (earlier.get(TRUNCATED_HEADER) or b"").decode().split(",") if c]
    ours = [(k, v) for k, v in headers if k.startswith(PREFIX)]
    if len(ours) != len(headers):
        headers = ours
        cut.append("headers")
    marks: Headers = [
        (TRUNCATED_HEADER, b"value,key,headers"),  # placeholder of the longest size
        (ORIGINAL_VALUE_SIZE, earlier.get(ORIGINAL_VALUE_SIZE, str(len(value or b"")).encode())),
        (ORIGINAL_KEY_SIZE, earlier.get(ORIGINAL_KEY_SIZE, str(len(key or b"")).encode())),
    ]
    if (
        key is not None
        and len(key) > MAX_KEY_BYTES
        and record_size(key, None, headers + marks) > limit
    ):
        key = key[:MAX_KEY_BYTES]
        cut.append("key")
    room = limit - record_size(key, None, headers + marks)
    if value is not None and len(value) > max(0, room):
        value = value[: max(0, room)]
        cut.insert(0, "value")
    order = ("value", "key", "headers")
    marks[0] = (TRUNCATED_HEADER, ",".join(c for c in order if c in cut).encode())
    return key, value, headers + marks


def parse_dead_letter_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """The ``driftline.errors.*`` headers as a dict without the prefix (for tools and tests)."""
    return {
        k[len(PREFIX) :]: v.decode("utf-8", "replace") for k, v in headers if k.startswith(PREFIX)
    }
