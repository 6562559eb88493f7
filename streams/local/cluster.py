"""A real Redis Cluster on 127.0.0.1: several valkey-server children joined into one.

Why a cluster and not one server: what breaks on a Redis Cluster does not show
on a single node.  Every multi-key command and Lua script must keep its keys in
one hash slot (or the node answers ``CROSSSLOT``), a client is redirected
(``MOVED``) to the node that owns a key, and a primary that dies is replaced by
its replica after an election.  Tests and benchmarks of the online store need
that behaviour from real servers, and Docker is not always there, so the
cluster is built from the same binaries :class:`EmbeddedRedis` runs, one
:class:`EmbeddedRedis` per node.

Assembly does what ``redis-cli --cluster create`` does, without its prompts and
with a wait on the cluster's own state at the end:

1. every node starts in cluster mode with its own directory (each writes its
   ``nodes.conf`` there) and its own cluster bus port, picked free like the
   client port (the default, client port + 10000, may be taken or past 65535);
2. every node gets a distinct config epoch, so slot ownership is unambiguous
   from the first gossip instead of being settled later by the servers'
   epoch-collision resolution;
3. the primaries claim an even share of the 16384 slots (``ADDSLOTSRANGE``);
4. every other node ``MEET``\\ s the first, gossip introduces the rest;
5. a replica is told whose replica it is (``REPLICATE``) once it knows that
   primary;
6. then :meth:`EmbeddedRedisCluster.start` waits, up to a deadline, until every
   node reports ``cluster_state:ok``, knows every node with no handshake or
   failure flag, agrees on who replicates whom, and every replica's link to
   its primary is up.  Readiness is that agreement, never a fixed sleep: on a
   busy machine gossip takes longer, and a client that connects to a node that
   has not yet heard of the others gets a partial slot map.

Needs a server with ``--cluster-port`` and ``CLUSTER ADDSLOTSRANGE``: any
Valkey, or Redis 7.0 and later.  redis is imported lazily, like in
:mod:`~driftline.streams.local.embedded`, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from driftline.features.keys import SLOTS
from driftline.streams.local.embedded import EmbeddedRedis
from driftline.streams.local.errors import EmbeddedError
from driftline.streams.local.ports import LOOPBACK, find_free_port

if TYPE_CHECKING:
    import redis

__all__ = ["SLOTS", "EmbeddedRedisCluster", "slot_ranges"]

log = logging.getLogger(__name__)


# A node that fails to start because its port or bus port was taken meanwhile is
# rebuilt with fresh ports this many times in all.
_NODE_ATTEMPTS = 3
# Log bytes per node quoted in an error: a cluster has several nodes, so less
# than one server's error quotes.
_TAIL_BYTES = 1500
# Each admin command's socket timeout; far below any deadline, so a node that
# hangs is reported rather than waited for.
_COMMAND_TIMEOUT_S = 2.0
# Pause between two looks at the cluster's state while waiting on it.
_POLL_S = 0.05
# CLUSTER NODES flags that mean a node is not (or no longer) a working member.
_BAD_FLAGS = frozenset({"handshake", "noaddr", "fail", "fail?"})


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """Split the slots 0..16383 into *primaries* contiguous, inclusive ranges.

    Sizes differ by at most one slot, so keys spread evenly over the primaries.
    """
    if primaries < 1:
        raise ValueError(f"primaries must be at least 1, got {primaries}")
    bounds = [i * SLOTS // primaries for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


class EmbeddedRedisCluster:
    """A Redis Cluster of valkey-server (or redis-server) processes on 127.0.0.1.

    Usage::

        with EmbeddedRedisCluster(primaries=3) as cluster:
            client = redis.asyncio.RedisCluster.from_url(cluster.url)

    Nodes ``0 .. primaries - 1`` start as primaries; replica ``j`` of primary
    ``i`` is node ``primaries + i * replicas_per_primary + j``.  *password* sets
    ``requirepass`` on every node and ``masterauth`` so replicas can sync.  Each
    node logs into its own directory: ``log_dir/node-<i>`` when *log_dir* is
    given (kept afterwards, for reading), otherwise a temporary directory
    removed on :meth:`stop`.  *node_timeout_ms* is ``cluster-node-timeout``:
    how long a node may be unreachable before it counts as failing, so the
    floor on how fast a replica takes over from a killed primary.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas_per_primary: int = 0,
        *,
        password: str | None = None,
        binary: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        node_timeout_ms: int = 2000,
    ) -> None:
        if primaries < 1:
            raise ValueError(f"primaries must be at least 1, got {primaries}")
        if replicas_per_primary < 0:
            raise ValueError(f"replicas_per_primary must be >= 0, got {replicas_per_primary}")
        if node_timeout_ms < 1:
            raise ValueError(f"node_timeout_ms must be positive, got {node_timeout_ms}")
        self._primary_count = primaries
        self._replicas_per_primary = replicas_per_primary
        self._password = password
        self._binary = binary
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._node_timeout_ms = node_timeout_ms
        count = primaries * (1 + replicas_per_primary)
        #: node index -> index of the primary it was told to replicate.
        self._replica_of = {
            primaries + i * replicas_per_primary + j: i
            for i in range(primaries)
            for j in range(replicas_per_primary)
        }
        self._bus_ports: list[int] = []
        self._nodes: list[EmbeddedRedis] = []
        for i in range(count):
            bus_port = self._free_bus_port()
            self._bus_ports.append(bus_port)
            self._nodes.append(self._new_node(i, bus_port))
        self._node_ids: list[str] = []
        self._ready_after_s: float | None = None

    # -- public surface

    @property
    def nodes(self) -> tuple[EmbeddedRedis, ...]:
        """Every node, in index order (primaries first, see the class docstring)."""
        return tuple(self._nodes)

    @property
    def primaries(self) -> tuple[EmbeddedRedis, ...]:
        """The running nodes that are primaries *now*, by asking each one (``ROLE``).

        Asked rather than remembered: after a failover a replica has become a
        primary.  A node that is down or does not answer is left out.
        """
        return tuple(node for node in self._nodes if self._role(node) == "master")

    @property
    def replicas(self) -> tuple[EmbeddedRedis, ...]:
        """The running nodes that are replicas now (``ROLE``), like :attr:`primaries`."""
        return tuple(node for node in self._nodes if self._role(node) == "slave")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the first node, without credentials.

        Any node will do as a cluster client's seed: the client asks it for the
        slot map and connects to the others from there.
        """
        return self._nodes[0].url

    @property
    def auth_url(self) -> str:
        """Like :attr:`url` but carrying the password when one is set."""
        return self._nodes[0].auth_url

    @property
    def urls(self) -> list[str]:
        """Every node's URL, in node order, without credentials."""
        return [node.url for node in self._nodes]

    @property
    def password(self) -> str | None:
        """The ``requirepass`` of every node, if any."""
        return self._password

    @property
    def ready_after_s(self) -> float | None:
        """Seconds the last :meth:`start` took, nodes and assembly; ``None`` before."""
        return self._ready_after_s

    def node_id(self, node: EmbeddedRedis) -> str:
        """The cluster node id (``CLUSTER MYID``) of *node*, known once started."""
        try:
            return self._node_ids[self._nodes.index(node)]
        except (ValueError, IndexError):
            raise EmbeddedError(f"not a started node of this cluster: {node.url}") from None

    def node_for_slot(self, slot: int) -> EmbeddedRedis:
        """The node that serves *slot* as primary, according to ``CLUSTER SLOTS``.

        The first running node that answers is asked, so after a failover this
        names the promoted replica once the survivors agree on it.
        """
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot must be in 0..{SLOTS - 1}, got {slot}")
        import redis

        last = "no node is running"
        for node in self._nodes:
            if not node.running:
                continue
            client = self._client(node)
            try:
                entries = _command(client, "CLUSTER", "SLOTS")
            except redis.RedisError as exc:
                last = f"{node.url}: {type(exc).__name__}: {exc}"
                continue
            finally:
                client.close()
            for entry in entries:
                first, last_slot, primary = int(entry[0]), int(entry[1]), entry[2]
                if first <= slot <= last_slot:
                    port = int(primary[1])
                    for candidate in self._nodes:
                        if candidate.port == port:
                            return candidate
                    raise EmbeddedError(f"slot {slot} is served by 127.0.0.1:{port}, not our node")
            raise EmbeddedError(f"no node serves slot {slot} (asked {node.url})")
        raise EmbeddedError(f"cannot ask the cluster who serves slot {slot}: {last}")

    def start(self, timeout: float = 60.0) -> Self:
        """Start every node, assemble the cluster, return once all nodes agree it is ok.

        *timeout* bounds the assembly (each node's own start-up has its own
        limit, :meth:`EmbeddedRedis.start`).  On any failure every node started
        so far is stopped and EmbeddedError is raised, quoting the nodes' logs.
        """
        if self._node_ids and all(node.running for node in self._nodes):
            return self
        started = time.monotonic()
        try:
            for index in range(len(self._nodes)):
                self._start_node(index)
            self._assemble(time.monotonic() + timeout, timeout)
        except BaseException:
            self.stop()
            raise
        self._ready_after_s = time.monotonic() - started
        log.info(
            "redis cluster ready in %.2fs: %d primaries, %d replicas each, seed %s",
            self._ready_after_s,
            self._primary_count,
            self._replicas_per_primary,
            self.url,
        )
        return self

    def stop(self) -> None:
        """Stop every node.  Safe to call repeatedly, and after a node was killed."""
        errors: list[BaseException] = []
        # Replicas first (they come last): a primary's shutdown otherwise waits
        # for its replicas to catch up.
        for node in reversed(self._nodes):
            try:
                node.stop()
            except Exception as exc:  # stop the others regardless
                errors.append(exc)
        self._node_ids = []
        if errors:
            raise EmbeddedError(f"stopping the redis cluster failed: {errors[0]}") from errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- nodes

    def _free_bus_port(self) -> int:
        """A free port that is none of our nodes' client or bus ports.

        The kernel may hand back a port it just handed out, since nothing binds
        it until the server starts; two nodes on one port would fail late.
        """
        taken = {node.port for node in self._nodes} | set(self._bus_ports)
        while True:
            port = find_free_port()
            if port not in taken:
                return port

    def _new_node(self, index: int, bus_port: int) -> EmbeddedRedis:
        node_dir = self._log_dir / f"node-{index}" if self._log_dir is not None else None
        extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            str(bus_port),
            "--cluster-node-timeout",
            str(self._node_timeout_ms),
            # A replica whose primary was killed takes over however long it was
            # cut off; by default one that lost the link for 10 node timeouts
            # (easily reached on a busy test machine) never does.
            "--cluster-replica-validity-factor",
            "0",
            # A primary waits this long for more replicas before it streams a
            # full sync (5 s by default); each of ours has one replica, or none.
            "--repl-diskless-sync-delay",
            "0",
        ]
        if self._password is not None:
            extra += ["--masterauth", self._password]
        return EmbeddedRedis(
            password=self._password, binary=self._binary, log_dir=node_dir, extra_args=extra
        )

    def _start_node(self, index: int) -> None:
        """Start node *index*; rebuild it on fresh ports if its ports were taken."""
        for attempt in range(1, _NODE_ATTEMPTS + 1):
            node = self._nodes[index]
            if self._log_dir is not None:
                # A nodes.conf left by an earlier run in the same directory would
                # bring back that run's node id, peers and slots.
                (self._log_dir / f"node-{index}" / "nodes.conf").unlink(missing_ok=True)
            try:
                node.start()
                return
            except EmbeddedError as exc:
                message = str(exc).lower()
                port_clash = "no free port" in message or "in use" in message
                node.stop()  # a failed start may leave its temporary directory
                if not port_clash or attempt == _NODE_ATTEMPTS:
                    raise EmbeddedError(f"redis cluster node {index} did not start: {exc}") from exc
                self._bus_ports[index] = self._free_bus_port()
                self._nodes[index] = self._new_node(index, self._bus_ports[index])
                log.info("redis cluster node %d: port taken, retrying on new ports", index)

    def _client(self, node: EmbeddedRedis) -> redis.Redis:
        import redis

        return redis.Redis(
            host=LOOPBACK,
            port=node.port,
            password=self._password,
            decode_responses=True,
            socket_connect_timeout=_COMMAND_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
        )

    def _role(self, node: EmbeddedRedis) -> str | None:
        """``ROLE``'s first field (``master`` or ``slave``), ``None`` if down or silent."""
        import redis

        if not node.running:
            return None
        client = self._client(node)
        try:
            role = _command(client, "ROLE")
        except redis.RedisError:
            return None
        finally:
            client.close()
        return str(role[0])

    # -- assembly

    def _assemble(self, deadline: float, timeout: float) -> None:
        import redis

        clients = [self._client(node) for node in self._nodes]
        step = "asking each node its id (CLUSTER MYID)"
        try:
            self._node_ids = [str(_command(c, "CLUSTER", "MYID")) for c in clients]
            step = "setting config epochs (CLUSTER SET-CONFIG-EPOCH)"
            for epoch, client in enumerate(clients, start=1):
                _command(client, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
            step = "assigning slots (CLUSTER ADDSLOTSRANGE)"
            for index, (first, last) in enumerate(slot_ranges(self._primary_count)):
                _command(clients[index], "CLUSTER", "ADDSLOTSRANGE", first, last)
            step = "joining the nodes (CLUSTER MEET)"
            seed_port, seed_bus = self._nodes[0].port, self._bus_ports[0]
            for client in clients[1:]:
                _command(client, "CLUSTER", "MEET", LOOPBACK, seed_port, seed_bus)
            if self._replica_of:
                step = "waiting for every node to know every other"
                self._wait(deadline, timeout, step, lambda: self._problem(clients, links=False))
                step = "attaching replicas (CLUSTER REPLICATE)"
                for replica, primary in self._replica_of.items():
                    _command(clients[replica], "CLUSTER", "REPLICATE", self._node_ids[primary])
            step = "waiting for every node to report the cluster ok"
            self._wait(deadline, timeout, step, lambda: self._problem(clients, links=True))
        except redis.RedisError as exc:
            raise EmbeddedError(
                f"redis cluster assembly failed while {step}: {type(exc).__name__}: {exc}. "
                f"{self._log_tails()}"
            ) from exc
        finally:
            for client in clients:
                client.close()

    def _wait(
        self, deadline: float, timeout: float, what: str, problem: Callable[[], str | None]
    ) -> None:
        """Poll *problem* until it finds none; raise EmbeddedError at *deadline*.

        A node that exits meanwhile fails the wait at once: nothing will heal it.
        """
        import redis

        while True:
            for index, node in enumerate(self._nodes):
                if not node.running:
                    raise EmbeddedError(
                        f"redis cluster node {index} ({node.url}) exited while {what}. "
                        f"{self._log_tails()}"
                    )
            try:
                found = problem()
            except redis.RedisError as exc:
                found = f"{type(exc).__name__}: {exc}"
            if found is None:
                return
            if time.monotonic() >= deadline:
                raise EmbeddedError(
                    f"redis cluster not formed within {timeout:.0f}s while {what}: {found}. "
                    f"{self._log_tails()}"
                )
            time.sleep(_POLL_S)

    def _problem(self, clients: Sequence[redis.Redis], *, links: bool) -> str | None:
        """What still keeps the cluster from being formed, or ``None`` when it is.

        With *links* false only membership counts (every node knows every node,
        none in handshake); with *links* true also cluster state, replica
        assignment as every node sees it, and each replica's replication link.
        """
        ids = self._node_ids
        for index, client in enumerate(clients):
            where = f"node {index} ({self._nodes[index].url})"
            view = _parse_nodes(str(_command(client, "CLUSTER", "NODES")))
            missing = [node_id for node_id in ids if node_id not in view]
            if missing:
                return f"{where} does not know {len(missing)} of {len(ids)} nodes yet"
            for node_id, (flags, _) in view.items():
                bad = flags & _BAD_FLAGS
                if bad:
                    return f"{where} sees {node_id} as {','.join(sorted(bad))}"
            if not links:
                continue
            for replica, primary in self._replica_of.items():
                flags, master = view[ids[replica]]
                if "slave" not in flags or master != ids[primary]:
                    return f"{where} does not see node {replica} as replica of node {primary}"
            info = _parse_info(str(_command(client, "CLUSTER", "INFO")))
            if info.get("cluster_state") != "ok":
                return f"{where} reports cluster_state:{info.get('cluster_state')}"
            if index in self._replica_of:
                role = _command(client, "ROLE")
                if role[0] != "slave" or role[3] != "connected":
                    return f"{where} replication: {role[0]} {role[3] if len(role) > 3 else ''}"
        return None

    def _log_tails(self) -> str:
        parts = ["Node log tails:"]
        for index, node in enumerate(self._nodes):
            tail = node.log_tail(_TAIL_BYTES).rstrip() or "(empty)"
            parts.append(f"--- node {index} 127.0.0.1:{node.port} ({node.log_path}) ---\n{tail}")
        return "\n".join(parts)


def _command(client: redis.Redis, *args: str | int) -> Any:
    """Send one command and return the server's reply as sent.

    Commands go as separate words (``"CLUSTER", "NODES"``): redis-py keys its
    reply parsers on the joined name, so none applies and the reply's shape is
    the server's documented one, whatever the redis-py version.
    """
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _parse_nodes(text: str) -> dict[str, tuple[frozenset[str], str]]:
    """``CLUSTER NODES`` as node id -> (flags, primary id or ``-``).

    Parsed here rather than by redis-py's response callback, whose output shape
    has changed between versions; the text format is the server's contract.
    """
    view: dict[str, tuple[frozenset[str], str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            view[fields[0]] = (frozenset(fields[2].split(",")), fields[3])
    return view


def _parse_info(text: str) -> dict[str, str]:
    """``CLUSTER INFO``'s ``key:value`` lines as a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}
