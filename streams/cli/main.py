"""``driftline`` command line: worker, dev, check-config, produce.

User mistakes (a bad config, a missing file, an unreachable broker) end with a
one-paragraph message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from driftline.streams.cli.options import config_option
from driftline.streams.errors import ConfigError, DriftlineError, exit_with
from driftline.streams.settings import Settings, load_settings

log = logging.getLogger("driftline")

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn expected failures into a message and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DriftlineError as exc:  # the one root: config, contracts, clients
            exit_with(exc)

    return wrapper  # type: ignore[return-value]


def _load(config: Path) -> Settings:
    return load_settings(config)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="driftline")
def main() -> None:
    """driftline: streaming features and drift detection on Kafka."""


@main.command("check-config")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@user_errors
def check_config(config: Path) -> None:
    """Validate CONFIG and its contract files without connecting anywhere."""
    from driftline.streams.cli.check import check_config as check

    check(config)


@main.command()
@config_option
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="worker processes to run (a worker uses about one core); metrics ports count up "
    "from metrics.port",
)
@user_errors
def worker(config: Path, processes: int) -> None:
    """Run the stream worker (many instances share one consumer group)."""
    from driftline.streams.sources import build_sources

    settings = _load(config)
    sources = build_sources(settings, str(config))  # contract errors before Faust starts
    if processes > 1:
        from driftline.streams.logs import logging_config
        from driftline.streams.topics import wait_for_broker
        from driftline.streams.worker.supervisor import check_processes, run_processes

        logging.config.dictConfig(
            logging_config(settings.worker.log_level, settings.worker.log_format)
        )
        try:
            check_processes(settings, processes)
        except ValueError as exc:
            raise ConfigError(f"{config}: {exc}") from None
        # Said once here rather than by every worker.
        asyncio.run(
            wait_for_broker(
                settings.kafka.aiokafka_kwargs(),
                timeout_s=settings.kafka.startup_timeout_s,
                origin=str(config),
            )
        )
        sys.exit(run_processes(config, settings, processes))
    from driftline.streams.worker.runner import run_worker

    run_worker(settings, sources, origin=str(config))


@main.command()
@config_option
@click.option(
    "--compact",
    is_flag=True,
    help="instead: rewrite the log's small files into large ones, then exit (run it daily)",
)
@user_errors
def archive(config: Path, compact: bool) -> None:
    """Write the accepted events of each source to the offline event log (offline.path).

    Its own consumer group; exactly once into Delta Lake tables, one per source.
    """
    from driftline.streams.archive.app import run_archive
    from driftline.streams.logs import logging_config
    from driftline.streams.sources import archived_sources, build_sources
    from driftline.streams.topics import wait_for_broker

    settings = _load(config)
    sources = build_sources(settings, str(config))
    if compact:
        from driftline.sinks.offline_log import OfflineLog

        log = OfflineLog(settings.offline.path)
        for name in archived_sources(settings, sources):
            removed, added = log.compact(name)
            click.echo(f"{log.table_uri(name)}: {removed} files rewritten into {added}")
        return
    logging.config.dictConfig(logging_config(settings.worker.log_level, settings.worker.log_format))

    async def run() -> None:
        await wait_for_broker(
            settings.kafka.aiokafka_kwargs(),
            timeout_s=settings.kafka.startup_timeout_s,
            origin=str(config),
        )
        await run_archive(settings, sources)

    asyncio.run(run())


@main.command("training-set")
@config_option
@click.option(
    "--entities",
    "rows_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="label rows (Parquet or CSV): an entity, a timestamp, any label columns",
)
@click.option(
    "--features",
    "features",
    required=True,
    help="comma-separated group:feature (or group for all of it), e.g. user_spend:amount_mean_5m",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="output file: Parquet (.parquet) or CSV",
)
@click.option("--entity-column", default=None, help="default: the group's entity key, or entity")
@click.option("--time-column", default="timestamp", show_default=True)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    help="processes, each for a share of the entities (default: one per core from "
    "50,000 rows on, else 1)",
)
@user_errors
def training_set_command(
    config: Path,
    rows_path: Path,
    features: str,
    out: Path,
    entity_column: str | None,
    time_column: str,
    jobs: int | None,
) -> None:
    """Each row's features as of its timestamp, from the offline log (no event after it counts)."""
    from driftline.streams.training import read_rows, training_set, write_rows

    rows = read_rows(rows_path)
    if jobs is None:
        jobs = min(os.cpu_count() or 1, 8) if rows.height >= 50_000 else 1
    frame = training_set(
        config,
        rows,
        features.split(","),
        entity_column=entity_column,
        time_column=time_column,
        progress=True,
        jobs=jobs,
    )
    write_rows(frame, out)
    click.echo(f"{frame.height} rows, {frame.width - rows.width} features -> {out}")


@main.command("backfill")
@config_option
@click.option("--group", "group", required=True, help="the feature group to fill")
@click.option(
    "--version",
    "version",
    type=click.IntRange(1),
    default=None,
    help="the version to fill (default: the newest the config defines)",
)
@click.option(
    "--from",
    "from_text",
    default=None,
    help="oldest event time to apply: ISO 8601 (2026-11-01T00:00Z) or a duration ago (36h); "
    "default: the group's longest window + allowed lateness ago",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0),
    default=300.0,
    show_default=True,
    help="seconds to wait for the workers to start the version and the archiver to catch up "
    "(and for the broker, while records are read from the topic)",
)
@click.option(
    "--max-rate",
    type=click.FloatRange(min=1, min_open=False),
    default=None,
    help="events per second at most (default: as fast as it goes), paced between writes; "
    "with a small --entities-per-write it bounds what the backfill takes from the live path",
)
@click.option(
    "--entities-per-write",
    type=click.IntRange(1),
    default=500,
    show_default=True,
    help="entities per Redis script: a script blocks its Redis (and the live writes and "
    "reads) while it runs, about 30 us per entity",
)
@click.option("--no-progress", is_flag=True, help="no progress bar")
@user_errors
def backfill_command(
    config: Path,
    group: str,
    version: int | None,
    from_text: str | None,
    wait_s: float,
    max_rate: float | None,
    entities_per_write: int,
    no_progress: bool,
) -> None:
    """Fill a new feature group version with the events before the workers wrote it.

    Start the workers with the new version in the config (beside the old one)
    first.  The events come from the offline log (`driftline archive`) and,
    where the log does not reach back, from the topic's retained records.
    Safe to interrupt and run again: it resumes where it stopped.
    """
    from driftline.streams.backfill import backfill, iso_ms

    report = asyncio.run(
        backfill(
            _load(config),
            str(config),
            group,
            version,
            from_text=from_text,
            progress=not no_progress,
            wait_s=wait_s,
            max_rate=max_rate,
            max_entities=entities_per_write,
        )
    )
    since = iso_ms(report.from_ms)
    topic = f", {report.from_topic} of them read from the topic" if report.from_topic else ""
    click.echo(
        f"{report.group} v{report.version}: backfilled from {since}: {report.total} events{topic} "
        f"({report.applied} applied now, {report.resumed} by an earlier run), "
        f"{report.rate:,.0f} events/s.  Serve it with: "
        f"driftline registry activate {report.group} {report.version}"
    )


@main.group()
def features() -> None:
    """Read online features from Redis."""


@features.command("get")
@config_option
@click.option("--group", "group_name", default=None, help="feature group (default: the only one)")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="version of the group (default: the newest configured one)",
)
@click.option(
    "--as-of", "as_of_ms", type=int, default=None, help="read as of this epoch ms (default: now)"
)
@click.option("--json", "as_json", is_flag=True, help="print JSON (one object per entity)")
@click.argument("entities", nargs=-1, required=True)
@user_errors
def features_get(
    config: Path,
    group_name: str | None,
    version: int | None,
    as_of_ms: int | None,
    as_json: bool,
    entities: tuple[str, ...],
) -> None:
    """Print the features of ENTITIES (one Redis round trip for all of them).

    With several versions of the group configured, the newest is read unless
    --version says which.
    """
    from driftline.streams.cli.features import get_features

    settings = _load(config)
    click.echo(
        get_features(settings, str(config), group_name, list(entities), as_of_ms, as_json, version)
    )


@main.group()
def offsets() -> None:
    """The offsets stored in Redis with the features (what the worker has applied)."""


@offsets.command("show")
@config_option
@user_errors
def offsets_show(config: Path) -> None:
    """Print each source's stored offsets, and those beyond their partition's end."""
    import asyncio

    from driftline.streams.worker.offsets import check_offsets, stored_offsets

    settings = _load(config)
    stored = asyncio.run(stored_offsets(settings))
    ahead = {(a.source, a.partition): a for a in asyncio.run(check_offsets(settings))}
    for source in settings.sources:
        parts = stored.get(source.name, {})
        if not parts:
            click.echo(f"{source.name} ({source.topic}): nothing stored")
            continue
        for partition, offset in sorted(parts.items()):
            note = ahead.get((source.name, partition))
            flag = f"  AHEAD: {note.describe()}" if note else ""
            click.echo(f"{source.name} ({source.topic}) partition {partition}: {offset}{flag}")


@offsets.command("reset")
@config_option
@click.option("--source", "source_names", multiple=True, required=True, help="source to reset")
@click.option("--partition", "partitions", type=int, multiple=True, help="only these partitions")
@user_errors
def offsets_reset(config: Path, source_names: tuple[str, ...], partitions: tuple[int, ...]) -> None:
    """Forget stored offsets, so the worker applies records from its committed position.

    Features already stored stay.  Run it with the workers stopped.
    """
    import asyncio

    from driftline.streams.clients import feature_store, redis_client

    settings = _load(config)
    known = {s.name for s in settings.sources}
    for name in source_names:
        if name not in known:
            raise ConfigError(
                f"{config}: no source named {name!r} (sources: {', '.join(sorted(known))})"
            )

    async def reset() -> list[tuple[str, int]]:
        client = redis_client(settings)
        store = feature_store(settings, client)
        try:
            return [
                (name, await store.reset_offsets(name, list(partitions) or None))
                for name in source_names
            ]
        finally:
            await client.aclose()

    for name, removed in asyncio.run(reset()):
        click.echo(f"{name}: forgot the stored offsets of {removed} partition(s)")


@main.group()
def monitors() -> None:
    """Drift monitors: their state, and accepting an incident as the new normal."""


@monitors.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON (per monitor, its segments)")
@user_errors
def monitors_list(config: Path, as_json: bool) -> None:
    """Each monitor's phase, open incident, and baseline against current values."""
    from driftline.streams.cli.monitors import list_monitors

    click.echo(list_monitors(_load(config), str(config), as_json=as_json))


@monitors.command("report")
@config_option
@click.option(
    "--html",
    "path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="file to write (default: NAME-drift.html)",
)
@click.argument("name")
@user_errors
def monitors_report(config: Path, path: Path | None, name: str) -> None:
    """Write an HTML page of monitor NAME: baseline against current, per segment.

    Self-contained (plots embedded, no network needed to open it); needs
    plotly (pip install 'driftline[report]').
    """
    from driftline.streams.cli.monitors import report

    click.echo(report(_load(config), str(config), name, path))


@monitors.command("accept")
@config_option
@click.option("--segment", default=None, help="only this segment (default: every open one)")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="seconds to wait for the monitor's owner to apply it (0: do not wait)",
)
@click.argument("name")
@user_errors
def monitors_accept(config: Path, segment: str | None, wait_s: float, name: str) -> None:
    """Accept monitor NAME's open incident as the new normal.

    The incident closes (alert reason "accepted") and the newest values become
    the monitor's reference.  Sent to the worker that owns the monitor, which
    applies it in order with the monitor's values.
    """
    from driftline.streams.cli.monitors import accept

    click.echo(accept(_load(config), str(config), name, segment, wait_s=wait_s))


def _register_serving_commands() -> None:
    from driftline.streams.serve import cli as serve_cli

    for command in (serve_cli.serve, serve_cli.registry):
        assert command.callback is not None
        command.callback = user_errors(command.callback)
        main.add_command(command)


_register_serving_commands()


@main.command()
@config_option
@click.option("--topic", required=True, help="topic to send to")
@click.option(
    "--key-field",
    default=None,
    help="JSON field used as record key (default: the source's entity key)",
)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@user_errors
def produce(config: Path, topic: str, key_field: str | None, file: Path) -> None:
    """Send the lines of FILE (JSON Lines) to TOPIC, unchanged, with a progress bar."""
    from driftline.streams.cli.produce import produce_file

    settings = _load(config)
    if key_field is None:
        key_field = next((s.entity_key for s in settings.sources if s.topic == topic), None)
    sent = asyncio.run(
        produce_file(
            settings.kafka.aiokafka_kwargs(),
            topic,
            file,
            key_field=key_field,
            startup_timeout_s=settings.kafka.startup_timeout_s,
            origin=str(config),
        )
    )
    click.echo(f"sent {sent} record(s) to {topic}", err=True)


@main.command()
@click.option(
    "-c",
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="config file (default: the built-in demo config)",
)
@click.option(
    "--bootstrap", default=None, help="use this Kafka instead of starting the embedded broker"
)
@click.option("--redis-url", default=None, help="use this Redis instead of starting one")
@click.option(
    "--redis-cluster",
    is_flag=True,
    help="a Redis Cluster: start the embedded Redis as 3 primaries (or, with --redis-url, "
    "that URL is a cluster node); sets redis.cluster",
)
@click.option(
    "--tansu-bin",
    default=None,
    type=click.Path(dir_okay=False),
    help="explicit Tansu broker binary",
)
@click.option(
    "--redis-bin",
    default=None,
    type=click.Path(dir_okay=False),
    help="explicit redis-server/valkey-server binary",
)
@click.option("--rate", default=200.0, show_default=True, help="demo events per second")
@click.option(
    "--drift-after",
    default=90.0,
    show_default=True,
    help="seconds after start when demo amounts grow by 80 % (a drift to detect); 0: never",
)
@click.option(
    "--invalid-ratio",
    default=0.02,
    show_default=True,
    help="share of deliberately invalid demo events",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="worker metrics port (default: 9464, or a free one when 9464 is taken; 0: a free one)",
)
@click.option(
    "--duration",
    default=None,
    type=float,
    help="stop after this many seconds (default: until Ctrl-C)",
)
@user_errors
def dev(
    config: Path | None,
    bootstrap: str | None,
    redis_url: str | None,
    redis_cluster: bool,
    tansu_bin: str | None,
    redis_bin: str | None,
    rate: float,
    drift_after: float,
    invalid_ratio: float,
    metrics_port: int | None,
    duration: float | None,
) -> None:
    """Start a broker, Redis, the worker and a demo producer; Ctrl-C stops them all."""
    from driftline.streams.local.dev import DevOptions, run_dev

    options = DevOptions(
        config=config,
        bootstrap=bootstrap,
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        tansu_bin=tansu_bin,
        redis_bin=redis_bin,
        rate=rate,
        drift_after=drift_after,
        invalid_ratio=invalid_ratio,
        metrics_port=metrics_port,
        duration=duration,
    )
    sys.exit(run_dev(options))


if __name__ == "__main__":
    main()
