"""Redis checkpoints of drift monitors, written with compare-and-set.

Key ``{prefix}:monitor:{name}`` (hash):

* ``state``  the monitor's checkpoint (``SegmentedMonitor.to_state()``: a JSON
             document of data, never a pickle; what fails to parse as one is
             refused and the monitor learns afresh)
* ``seq``    incremented by every save; a save names the ``seq`` it loaded
* ``hw``     JSON ``{"source/partition": offset}``: the highest source offset
             whose value the state contains, so values delivered again (a
             source replay, or the values topic replayed) are skipped

A worker that lost the monitor's partition but still holds it in memory
cannot overwrite the new owner's checkpoint: its ``seq`` is stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from driftline.sinks.redis_client import RedisClient

_SAVE = """
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
if seq ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'hw', ARGV[3], 'seq', tostring(tonumber(seq) + 1))
return 1
"""


@dataclass
class MonitorCheckpoint:
    state: bytes | None
    seq: int
    high_water: dict[str, int] = field(default_factory=dict)


def monitor_key(prefix: str, name: str) -> str:
    return f"{prefix}:monitor:{name}"


class RedisMonitorStore:
    def __init__(self, client: RedisClient, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._save = client.register_script(_SAVE)

    async def load(self, name: str) -> MonitorCheckpoint:
        state, seq, hw = await self.client.hmget(
            monitor_key(self.prefix, name), ["state", "seq", "hw"]
        )
        return MonitorCheckpoint(
            state if isinstance(state, bytes) and state else None,
            int(seq) if seq is not None else 0,
            {str(k): int(v) for k, v in orjson.loads(hw).items()} if hw else {},
        )

    async def save(self, name: str, checkpoint: MonitorCheckpoint) -> bool:
        """Store ``checkpoint`` if nobody saved since it was loaded; bumps its ``seq``."""
        assert checkpoint.state is not None
        ok = await self._save(
            keys=[monitor_key(self.prefix, name)],
            args=[str(checkpoint.seq), checkpoint.state, orjson.dumps(checkpoint.high_water)],
        )
        if ok:
            checkpoint.seq += 1
        return bool(ok)


class MemoryMonitorStore:
    """In-memory double with the same compare-and-set contract, for unit tests.

    Keeps what :class:`RedisMonitorStore` keeps (state bytes, ``seq``, the high
    water marks), copied on save and load so a caller cannot change a stored
    checkpoint through the object it saved.  ``fail_next`` makes that many
    calls raise ``ConnectionError`` first, as an unreachable Redis would.
    """

    def __init__(self, prefix: str = "driftline") -> None:
        self.prefix = prefix
        self.checkpoints: dict[str, MonitorCheckpoint] = {}
        self.saves = 0
        self.fail_next = 0

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down (test double)")

    async def load(self, name: str) -> MonitorCheckpoint:
        self._maybe_fail()
        held = self.checkpoints.get(name)
        if held is None:
            return MonitorCheckpoint(None, 0)
        return MonitorCheckpoint(held.state, held.seq, dict(held.high_water))

    async def save(self, name: str, checkpoint: MonitorCheckpoint) -> bool:
        assert checkpoint.state is not None
        self._maybe_fail()
        held = self.checkpoints.get(name)
        if (held.seq if held is not None else 0) != checkpoint.seq:
            return False
        checkpoint.seq += 1
        self.checkpoints[name] = MonitorCheckpoint(
            checkpoint.state, checkpoint.seq, dict(checkpoint.high_water)
        )
        self.saves += 1
        return True
