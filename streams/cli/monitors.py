"""``driftline monitors list`` and ``driftline monitors accept``: drift monitors for people.

``list`` reads every configured monitor's checkpoint from Redis (what its
owner last saved, at most one values batch old) and shows, per segment, the
phase, the open incident and the baseline against the current values.

``accept`` says that a monitor's open incident is the new normal.  The
monitor lives in whichever worker owns its partition of the values topic, so
the acceptance is sent *there*, as a record keyed by the monitor like its
values (:func:`driftline.drift.samples.accept_doc`): the owner applies it in
order with the values, once (a replay skips it), publishes the ``closed``
alert (reason ``accepted``) and checkpoints.  The command then waits until
the checkpoint shows it applied (``--wait``, default 30 s).
"""

from __future__ import annotations

import asyncio
import getpass
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from driftline.drift import MonitorConfig, SegmentedMonitor
from driftline.drift.exceptions import DriftStateError
from driftline.drift.samples import AcceptRequest, accept_doc
from driftline.drift.status import describe, segmented_status
from driftline.sinks.monitor_store import RedisMonitorStore
from driftline.streams.clients import redis_client
from driftline.streams.errors import ConfigError, DriftlineError
from driftline.streams.settings import Settings
from driftline.streams.topics import wait_for_broker
from driftline.streams.worker.monitors import ACCEPT_MARK

#: How often ``accept --wait`` reads the checkpoint.
_POLL_S = 0.25


def configured(settings: Settings, origin: str) -> dict[str, MonitorConfig]:
    """The monitors of the config by name (validated as the worker validates them)."""
    from driftline.streams.sources import build_sources

    sources = build_sources(settings, origin)
    return {m.name: m for ms in sources.monitors.values() for m in ms}


def _known(monitors: dict[str, MonitorConfig], name: str, origin: str) -> MonitorConfig:
    config = monitors.get(name)
    if config is None:
        import difflib

        hint = difflib.get_close_matches(name, list(monitors), n=1)
        known = ", ".join(sorted(monitors)) or "none"
        raise ConfigError(
            f"{origin}: no monitor named {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; monitors: {known}"
        )
    return config


async def load_monitors(
    settings: Settings, monitors: dict[str, MonitorConfig]
) -> dict[str, SegmentedMonitor | str]:
    """Per monitor: its state from the checkpoint in Redis, or why there is none."""
    client = redis_client(settings)
    store = RedisMonitorStore(client, prefix=settings.redis.key_prefix)
    out: dict[str, SegmentedMonitor | str] = {}
    try:
        for name, config in monitors.items():
            checkpoint = await store.load(name)
            if checkpoint.state is None:
                out[name] = "no checkpoint yet: no worker has fed it values"
                continue
            try:
                out[name] = SegmentedMonitor.from_state(checkpoint.state, config=config)
            except DriftStateError as exc:
                out[name] = f"checkpoint not usable ({exc.reason}): the worker will relearn it"
    finally:
        await client.aclose()
    return out


async def monitor_states(
    settings: Settings, monitors: dict[str, MonitorConfig]
) -> dict[str, list[dict[str, Any]] | str]:
    """Per monitor: its segments' status, or why there is none."""
    loaded = await load_monitors(settings, monitors)
    return {n: m if isinstance(m, str) else segmented_status(m) for n, m in loaded.items()}


def list_monitors(settings: Settings, origin: str, *, as_json: bool) -> str:
    states = asyncio.run(_guarded(monitor_states(settings, configured(settings, origin))))
    if as_json:
        return orjson.dumps(states, option=orjson.OPT_INDENT_2).decode()
    if not states:
        return f"{origin}: no monitors configured"
    lines: list[str] = []
    for name, state in states.items():
        lines += [f"{name}: {state}"] if isinstance(state, str) else describe(name, state)
    return "\n".join(lines)


async def _guarded(coro: Any) -> Any:
    """Redis unreachable is a message, not a traceback."""
    from driftline.sinks.redis_client import REDIS_ERRORS

    try:
        return await coro
    except REDIS_ERRORS as exc:
        raise DriftlineError(
            f"cannot read the monitors' checkpoints from Redis ({type(exc).__name__}: {exc}); "
            "check redis.url"
        ) from None


async def send_accept(settings: Settings, request: AcceptRequest, origin: str) -> int:
    """Send the acceptance to the values topic; its offset there."""
    kafka_kwargs = settings.kafka.aiokafka_kwargs()
    topic = settings.values_topic
    existing = await wait_for_broker(
        kafka_kwargs, timeout_s=settings.kafka.startup_timeout_s, origin=origin
    )
    if topic not in existing:
        raise DriftlineError(
            f"the values topic {topic!r} does not exist: no worker has run with this config "
            "yet, so there is no incident to accept"
        )
    producer = AIOKafkaProducer(**kafka_kwargs, acks="all", enable_idempotence=False)
    try:
        await producer.start()
        key, value = accept_doc(request)
        metadata = await producer.send_and_wait(topic, value, key=key)
    except KafkaError as exc:
        raise DriftlineError(f"cannot send the acceptance to {topic!r}: {exc}") from None
    finally:
        await producer.stop()
    return int(metadata.offset)


async def wait_applied(settings: Settings, name: str, offset: int, wait_s: float) -> bool:
    """Whether the monitor's checkpoint shows the acceptance at ``offset`` applied in time."""
    client = redis_client(settings)
    store = RedisMonitorStore(client, prefix=settings.redis.key_prefix)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            checkpoint = await store.load(name)
            if checkpoint.high_water.get(ACCEPT_MARK, -1) >= offset:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
    finally:
        await client.aclose()


def accept(
    settings: Settings, origin: str, name: str, segment: str | None, *, wait_s: float
) -> str:
    monitors = configured(settings, origin)
    config = _known(monitors, name, origin)
    if segment is not None and config.segment_by is None:
        raise ConfigError(f"{origin}: monitor {name!r} has no segment_by: leave out --segment")
    which = f"segment {segment!r}" if segment is not None else "every open segment"
    state = asyncio.run(_guarded(monitor_states(settings, {name: config})))[name]
    if isinstance(state, str):
        return f"monitor {name}: nothing to accept ({state})"
    open_segments = [str(r["segment"]) for r in state if r["incident"] is not None]
    if segment is not None and segment not in {str(r["segment"]) for r in state}:
        known = ", ".join(sorted(str(r["segment"]) for r in state))
        raise ConfigError(f"monitor {name} has no segment {segment!r}; its segments: {known}")
    if not open_segments or (segment is not None and segment not in open_segments):
        return f"monitor {name}: no open incident ({which}); nothing to accept"
    request = AcceptRequest(name, segment, int(time.time() * 1000), _who())
    offset = asyncio.run(send_accept(settings, request, origin))
    if wait_s <= 0:
        return f"acceptance of monitor {name} ({which}) sent; its owner applies it in order"
    if not asyncio.run(_guarded(wait_applied(settings, name, offset, wait_s))):
        raise DriftlineError(
            f"the acceptance of monitor {name} is on {settings.values_topic!r} (offset "
            f"{offset}), but no worker applied it within {wait_s:g} s: is a worker running? "
            "It is applied when the monitor's owner reaches it"
        )
    after = asyncio.run(_guarded(monitor_states(settings, {name: config})))[name]
    still = [] if isinstance(after, str) else [r for r in after if r["incident"] is not None]
    done = f"monitor {name}: accepted ({which}); the newest values are its new reference"
    return done + (f"; still open: {', '.join(str(r['segment']) for r in still)}" if still else "")


def report(settings: Settings, origin: str, name: str, path: Path | None) -> str:
    """Write monitor ``name``'s HTML report (default ``<name>-drift.html``)."""
    from driftline.streams.cli.report import report_html, write_report

    config = _known(configured(settings, origin), name, origin)

    monitor = asyncio.run(_guarded(load_monitors(settings, {name: config})))[name]
    if isinstance(monitor, str):
        raise DriftlineError(f"monitor {name}: {monitor}")
    return write_report(path or Path(f"{name}-drift.html"), report_html(name, config, monitor))


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a container
        return "cli"
