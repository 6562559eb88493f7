"""The ids one partition saw recently: the memory behind the uniqueness check.

Bounded in time (``horizon_ms`` of event time) and in size (``max_ids``); see
:mod:`driftline.drift.quality` for what counts as a duplicate and why a
redelivery of the same record never does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["DUPLICATE", "NEW", "REPLAY", "RecentIds"]

_OFFSET_BITS = 64
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1

NEW, REPLAY, DUPLICATE = "new", "replay", "duplicate"


class RecentIds:
    """The ids one partition saw within the last ``horizon_ms`` of event time.

    An ordered map ``id -> (event time << 64) | offset`` of each id's latest
    *new* sighting, in arrival order, so the oldest sightings are dropped from
    the front in O(1).  One packed int per id instead of a tuple keeps an
    entry at about 150 bytes plus the id itself.
    """

    def __init__(self, horizon_ms: int, max_ids: int) -> None:
        self.horizon_ms = horizon_ms
        self.max_ids = max_ids
        self.newest_ms: int | None = None
        self._front_ms = 0
        self._ids: OrderedDict[Hashable, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def see(self, key: Hashable, offset: int, time_ms: int) -> tuple[str, int]:
        """Record a sighting; returns its verdict and how many ids were evicted."""
        newest = self.newest_ms
        if newest is None or time_ms > newest:
            newest = self.newest_ms = time_ms
        cutoff = newest - self.horizon_ms
        ids = self._ids
        packed = ids.get(key)
        if packed is not None:
            seen_time = packed >> _OFFSET_BITS
            if seen_time >= cutoff:  # not expired
                if packed & _OFFSET_MASK == offset:
                    return REPLAY, 0
                if abs(time_ms - seen_time) <= self.horizon_ms:
                    return DUPLICATE, 0
            del ids[key]  # expired or too far apart: a new sighting
        if not ids:
            self._front_ms = time_ms
        ids[key] = (time_ms << _OFFSET_BITS) | offset
        if self._front_ms < cutoff or len(ids) > self.max_ids:
            return NEW, self._trim(cutoff)
        return NEW, 0

    def _trim(self, cutoff_ms: int) -> int:
        """Drop expired sightings from the front, then the oldest beyond ``max_ids``.

        ``_front_ms`` caches the front's event time so most sightings skip
        this; it may be stale after the front was deleted as a re-sighting,
        which only delays dropping (expiry is also checked on lookup).
        """
        ids = self._ids
        while ids:
            oldest = next(iter(ids.values()))
            if oldest >> _OFFSET_BITS >= cutoff_ms:
                break
            ids.popitem(last=False)
        evicted = 0
        while len(ids) > self.max_ids:
            ids.popitem(last=False)
            evicted += 1
        if ids:
            self._front_ms = next(iter(ids.values())) >> _OFFSET_BITS
        return evicted
