"""Where the online store keeps things: Redis key names, with shards for Redis Cluster.

A Redis Cluster runs a Lua script only on keys of one hash slot, and the
online store's exactly-once write is one script that merges a batch's feature
updates together with the offset they advance.  So on a cluster the store is
cut into ``shards`` (a fixed number, chosen at deployment): an entity belongs
to shard ``crc32(entity) mod shards``, and every key of a shard carries the
shard's *hash tag*, so one script can write all of a shard's entities and its
offset fence at once::

    one Redis (shards = 1)                      Redis Cluster (shards = S)
    {prefix}:fg:{group}:v{N}:{entity}           {prefix}:fg:{group}:v{N}:{{tag s}}:{entity}
    {prefix}:offsets:{source}   offsets         {prefix}:offsets:{source}    progress (below)
                                                {prefix}:{{tag s}}:fence:{source}  per shard
    {prefix}:registry:{group}                   unchanged (one key per call)
    {prefix}:monitor:{name}                     unchanged (one key per call)
    {prefix}:layout             the shard count the store was created with

A shard's tag is a short string chosen so that its slot falls in the shard's
share of the 16384 slots (shard ``i`` of ``S`` in ``[i*16384/S, (i+1)*16384/S)``):
the shards spread over the slot ranges evenly, so a cluster whose primaries
own equal slot ranges (as ``--cluster create`` and :mod:`driftline`'s own
local cluster assign them) holds equal numbers of shards on every primary.

A reader finds an entity's key from the entity alone (its shard is a hash of
it), and a topic that gains partitions changes nothing here: the fences hold
one field per partition.  The price is that a hot entity makes its shard's
slot, and so one primary, hot; and the shard count cannot change without
writing the store again (a new ``key_prefix``, or a new version of each group).

Pure: no Redis here.  The slot function is Redis Cluster's CRC16 (XMODEM), which
is :func:`binascii.crc_hqx`.
"""

from __future__ import annotations

import binascii
import functools
import zlib
from dataclasses import dataclass

from driftline.features.exceptions import LayoutError

__all__ = [
    "MAX_SHARDS",
    "SLOTS",
    "KeyLayout",
    "LayoutError",
    "key_slot",
    "shard_of",
    "shard_tags",
]

#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: Shards beyond this buy nothing (a cluster of more primaries is rare) and slow the tag search.
MAX_SHARDS = 1024


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (its ``{tag}`` when it has a non-empty one)."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOTS


def shard_of(entity: str, shards: int) -> int:
    """The shard that holds ``entity``: ``crc32(utf-8 bytes) mod shards`` (stable everywhere)."""
    if shards == 1:
        return 0
    return zlib.crc32(entity.encode()) % shards


@functools.cache
def shard_tags(shards: int) -> tuple[str, ...]:
    """One hash tag per shard, shard ``i``'s slot in its even share of the slot range.

    Found by trying ``"{i}.{n}"`` for n = 0, 1, ... (about ``shards`` tries per
    shard: 4,000 CRCs for 64 shards, 0.6 s for 1,024), so every process that
    runs the same code finds the same tags.
    """
    if not 1 <= shards <= MAX_SHARDS:
        raise LayoutError(f"shards must be between 1 and {MAX_SHARDS}, not {shards}")
    tags = []
    for i in range(shards):
        low, high = i * SLOTS // shards, (i + 1) * SLOTS // shards
        n = 0
        while not low <= key_slot(f"{i}.{n}") < high:
            n += 1
        tags.append(f"{i}.{n}")
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The store's key names under ``prefix`` with ``shards`` shards (1: one Redis)."""

    prefix: str
    shards: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise LayoutError(f"shards must be between 1 and {MAX_SHARDS}, not {self.shards}")
        if self.shards > 1 and ("{" in self.prefix or "}" in self.prefix):
            raise LayoutError(
                f"key prefix {self.prefix!r}: braces would become the Redis Cluster hash tag; "
                "choose a prefix without '{' and '}'"
            )

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    def shard(self, entity: str) -> int:
        return shard_of(entity, self.shards)

    def tag(self, shard: int) -> str:
        """The hash tag of ``shard``, braces included (``""`` on one Redis)."""
        return "{" + shard_tags(self.shards)[shard] + "}" if self.sharded else ""

    def group_prefix(self, group: str, version: int) -> str:
        """What every entity key of a group version starts with (for ``SCAN MATCH``)."""
        return f"{self.prefix}:fg:{group}:v{version}:"

    def key_head(self, group: str, version: int, shard: int = 0) -> str:
        """What the keys of ``shard``'s entities of a group version start with."""
        head = self.group_prefix(group, version)
        return f"{head}{self.tag(shard)}:" if self.sharded else head

    def entity_key(self, group: str, version: int, entity: str) -> str:
        return self.key_head(group, version, self.shard(entity)) + entity

    def offsets_key(self, source: str) -> str:
        """Per partition: the offset (``p{n}``) and watermark (``w{n}``) every shard has passed."""
        return f"{self.prefix}:offsets:{source}"

    def fence_key(self, source: str, shard: int) -> str:
        """Per partition: the last offset (and watermark) applied to one shard's entities."""
        return f"{self.prefix}:{self.tag(shard)}:fence:{source}"

    def mark_key(self, group: str, version: int, source: str, shard: int = 0) -> str:
        """Per partition (``p{n}``): the offset after which a group version is written live.

        Set once, by the first write of the version on the partition (on a
        sharded store: on the shard), to the offset stored before it: events at
        or below it are a backfill's to apply, the later ones the worker's.
        """
        where = f"{self.prefix}:{self.tag(shard)}" if self.sharded else self.prefix
        return f"{where}:live:{group}:v{version}:{source}"

    def registry_key(self, group: str) -> str:
        return f"{self.prefix}:registry:{group}"

    def layout_key(self) -> str:
        return f"{self.prefix}:layout"
