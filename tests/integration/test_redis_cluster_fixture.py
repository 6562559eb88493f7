"""The embedded Redis Cluster against real cluster clients: real processes, no mocks.

These tests pin down what cluster tests and benchmarks of the online store rely
on: every slot is served, keys spread over all primaries, a Lua script whose
keys share a hash tag runs (and one whose keys do not is refused by the
server), replicas attach with a password, and a killed primary is replaced by
its replica without losing an acknowledged write.  The session cluster
(``redis_cluster_url``) may be external (``REDIS_CLUSTER_URL``), so tests using
it only assume a 3-primary cluster shared with other tests: unique keys, counts
as differences.
"""

from __future__ import annotations

import os
import signal
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from redis.crc import key_slot

from driftline.streams.local.cluster import SLOTS, EmbeddedRedisCluster, slot_ranges
from driftline.streams.local.embedded import EmbeddedRedis
from driftline.streams.local.errors import EmbeddedError

KEYS = 1000
DEADLINE_S = 60.0

T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T | None], within: float = DEADLINE_S) -> T:
    """Poll *probe* until it returns something other than ``None``; fail at the deadline.

    Errors while polling count as "not yet" (a node being failed over refuses
    connections or answers CLUSTERDOWN for a while); the last one is reported.
    """
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            found = probe()
        except (redis.RedisError, EmbeddedError) as exc:
            found, last = None, exc
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not within {within:.0f}s (last error: {last!r})")
        time.sleep(0.1)


def _client(node: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=node.port,
        password=node.password,
        decode_responses=True,
        socket_timeout=5,
    )


def _command(node: EmbeddedRedis, *args: str | int) -> Any:
    """One command on *node* itself, on a connection of its own."""
    client = _client(node)
    try:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _role(node: EmbeddedRedis) -> list[Any]:
    role: list[Any] = _command(node, "ROLE")
    return role


def _pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


# ----------------------------------------------------------- the session cluster


def test_all_slots_served_by_three_primaries(redis_cluster_url: str) -> None:
    client = redis.Redis.from_url(redis_cluster_url, decode_responses=True)
    try:
        entries = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    covered = [0] * SLOTS
    primaries = set()
    for entry in entries:
        for slot in range(int(entry[0]), int(entry[1]) + 1):
            covered[slot] += 1
        primaries.add((entry[2][0], int(entry[2][1])))
    assert covered == [1] * SLOTS  # every slot exactly once
    assert len(primaries) == 3


async def test_keys_spread_over_all_primaries(redis_cluster_url: str) -> None:
    client = redis.asyncio.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    prefix = f"cluster-fixture:{uuid.uuid4().hex}"
    keys = [f"{prefix}:{i}" for i in range(KEYS)]
    try:
        await client.initialize()  # reads the slot map; get_primaries() needs it
        primaries = client.get_primaries()
        assert len(primaries) == 3

        async def sizes() -> list[int]:
            return [
                int(await client.execute_command("DBSIZE", target_nodes=node)) for node in primaries
            ]

        before = await sizes()
        async with client.pipeline(transaction=False) as pipe:
            for i, key in enumerate(keys):
                pipe.set(key, str(i))
            assert all(await pipe.execute())
        added = [after - was for after, was in zip(await sizes(), before, strict=True)]
        assert all(count > 0 for count in added), added
        assert sum(added) == KEYS
        assert await client.get(keys[-1]) == str(KEYS - 1)  # read back through MOVED routing
    finally:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
            await pipe.execute()
        await client.aclose()


async def test_lua_script_with_one_hash_tag(redis_cluster_url: str) -> None:
    client = redis.asyncio.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    tag = uuid.uuid4().hex
    total, last = f"{{{tag}}}:total", f"{{{tag}}}:last"
    script = client.register_script(
        "redis.call('SET', KEYS[2], ARGV[2]) return redis.call('INCRBY', KEYS[1], ARGV[1])"
    )
    try:
        assert await script(keys=[total, last], args=[5, "a"]) == 5
        assert await script(keys=[total, last], args=[2, "b"]) == 7  # EVALSHA, script cached
        assert await client.mget(total, last) == ["7", "b"]
    finally:
        await client.delete(total, last)
        await client.aclose()


async def test_script_across_slots_refused_by_the_server(redis_cluster_url: str) -> None:
    """The server, not only the client, refuses a script whose keys span slots."""
    client = redis.asyncio.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    first = f"cross:{uuid.uuid4().hex}"
    second = next(
        f"cross:{i}"
        for i in range(100)
        if key_slot(f"cross:{i}".encode()) != key_slot(first.encode())
    )
    try:
        await client.initialize()
        node = client.get_node_from_key(first)
        assert node is not None
        # The server's "-CROSSSLOT ..." reply, mapped to its exception by the parser.
        with pytest.raises(redis.exceptions.ClusterCrossSlotError):
            await node.execute_command(
                "EVAL", "return redis.call('MGET', KEYS[1], KEYS[2])", 2, first, second
            )
    finally:
        await client.aclose()


# --------------------------------------------------------- clusters of their own


def test_slot_ranges_split_evenly() -> None:
    assert slot_ranges(1) == [(0, SLOTS - 1)]
    ranges = slot_ranges(3)
    assert ranges == [(0, 5460), (5461, 10921), (10922, 16383)]
    with pytest.raises(ValueError):
        slot_ranges(0)
    with pytest.raises(ValueError):
        EmbeddedRedisCluster(primaries=0)


def test_replicas_attach_with_password(tmp_path: Path) -> None:
    password = "s3cret pass:word"
    with EmbeddedRedisCluster(
        primaries=3, replicas_per_primary=1, password=password, log_dir=tmp_path
    ) as cluster:
        nodes = cluster.nodes
        assert len(nodes) == 6
        assert set(cluster.primaries) == set(nodes[:3])
        assert set(cluster.replicas) == set(nodes[3:])
        for index, replica in enumerate(nodes[3:]):
            role = _role(replica)
            # ["slave", primary host, primary port, link state, offset]: the sync
            # only reaches "connected" when masterauth was accepted.
            assert role[0] == "slave"
            assert int(role[2]) == nodes[index].port
            assert role[3] == "connected"
            primary_role = _role(nodes[index])
            assert primary_role[0] == "master"
            assert [int(r[1]) for r in primary_role[2]] == [replica.port]
        for index in range(6):  # each node kept its own cluster config
            assert (tmp_path / f"node-{index}" / "nodes.conf").is_file()
        with (
            redis.Redis.from_url(cluster.url) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()
        assert cluster.url.startswith("redis://127.0.0.1:") and password not in cluster.url
        client = redis.RedisCluster.from_url(cluster.auth_url, decode_responses=True)
        try:
            assert client.set("with-password", "1")
            assert client.get("with-password") == "1"
        finally:
            client.close()
        pids = [node.pid for node in nodes]
    assert all(pid is not None and _pid_gone(pid) for pid in pids)


async def test_failover_keeps_an_acknowledged_write() -> None:
    """A primary killed with SIGKILL is replaced by its replica, which has the write.

    The write is acknowledged by the replica first (WAIT on the connection that
    wrote), so it cannot be lost with the primary.  Readiness is polled against
    a 60 s deadline: how soon the survivors agree depends on the node timeout
    (2 s) and on how busy the machine is.
    """
    with EmbeddedRedisCluster(primaries=3, replicas_per_primary=1) as cluster:
        key, value = "failover:key", uuid.uuid4().hex
        primary = cluster.node_for_slot(key_slot(key.encode()))
        replica = next(r for r in cluster.replicas if int(_role(r)[2]) == primary.port)
        direct = _client(primary)
        try:
            pipe = direct.pipeline(transaction=False)  # one connection for SET and WAIT
            pipe.set(key, value)
            pipe.execute_command("WAIT", 1, 10_000)  # type: ignore[no-untyped-call]
            assert pipe.execute() == [True, 1]
        finally:
            direct.close()

        killed_pid = primary.pid
        assert killed_pid is not None
        os.kill(killed_pid, signal.SIGKILL)
        primary.stop()  # reaps it
        survivors = [node for node in cluster.nodes if node.running]

        def promoted() -> bool | None:
            if _role(replica)[0] != "master":
                return None
            if cluster.node_for_slot(key_slot(key.encode())) is not replica:
                return None
            for node in survivors:
                if "cluster_state:ok" not in _command(node, "CLUSTER", "INFO"):
                    return None
            return True

        _wait_for("replica promoted and cluster ok", promoted)
        client = redis.asyncio.RedisCluster.from_url(survivors[0].url, decode_responses=True)
        try:
            assert await client.get(key) == value
            assert await client.set(key, "after")  # and it takes writes
            assert await client.get(key) == "after"
        finally:
            await client.aclose()


def test_node_that_cannot_start_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "fake-server"
    fake.write_text("#!/bin/sh\necho 'fake server: cluster support missing' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    cluster = EmbeddedRedisCluster(binary=str(fake), log_dir=tmp_path / "logs")
    with pytest.raises(EmbeddedError, match="node 0 did not start") as info:
        cluster.start()
    assert "cluster support missing" in str(info.value)
    assert not any(node.running for node in cluster.nodes)
