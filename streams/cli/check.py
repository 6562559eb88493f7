"""``driftline check-config``: compile a config as the worker would, and say what it declares."""

from __future__ import annotations

from pathlib import Path

import click

from driftline.drift.quality import QualityChecker
from driftline.errors import redact
from driftline.streams.settings import load_settings
from driftline.streams.sources import build_sources


def check_config(config: Path) -> None:
    """Validate ``config`` and its contract files without connecting anywhere; print a summary."""
    settings = load_settings(config)
    sources = build_sources(settings, str(config))
    parsers, groups, monitors, quality = (
        sources.parsers,
        sources.groups,
        sources.monitors,
        sources.quality,
    )
    click.echo(f"{config}: OK")
    click.echo(
        f"  kafka   {redact(settings.kafka.bootstrap_servers)} "
        f"({settings.kafka.security_protocol}), group {settings.app_id}"
    )
    click.echo(f"  redis   {redact(settings.redis.url)}")
    metrics = (
        "disabled"
        if settings.metrics.port == 0
        else f"http://{settings.metrics.host}:{settings.metrics.port}/metrics"
    )
    click.echo(f"  metrics {metrics}")
    for source in settings.sources:
        parser = parsers[source.name]
        contract = getattr(parser.decoder, "contract", None)
        engine = getattr(contract, "engine", "avro") if contract is not None else "confluent-avro"
        fingerprint = getattr(contract, "fingerprint", "")
        click.echo(
            f"  source  {source.name}: topic {source.topic} -> dead letters {source.dlq_topic}; "
            f"contract {source.schema_file.name} "
            f"({engine}{', ' + fingerprint[:19] if fingerprint else ''}); "
            f"entity {source.entity_key}; event time {source.event_time or 'record timestamp'}"
        )
        for group in groups.get(source.name, ()):
            windows = ", ".join(w.name for w in group.windows)
            click.echo(
                f"  group   {group.name} v{group.version} on {source.name}: "
                f"{len(group.feature_names())} features over {windows}; "
                f"fingerprint {group.fingerprint()[:12]}"
            )
        checks = _describe_quality(quality[source.name])
        if checks:
            click.echo(f"  quality {source.name}: {checks}")
        for monitor in monitors.get(source.name, ()):
            segments = f" by {monitor.segment_by}" if monitor.segment_by else ""
            click.echo(
                f"  monitor {monitor.name}: {source.name}.{monitor.watched}{segments}; "
                f"detectors {', '.join(monitor.detectors)}; warm-up {monitor.warmup} values"
            )
    if settings.monitors:
        click.echo(
            f"  drift   values via {settings.values_topic}, alerts to {settings.drift.alerts_topic}"
        )


def _describe_quality(checker: QualityChecker) -> str:
    parts = []
    if checker.completeness:
        parts.append(f"completeness of {len(checker.completeness)} fields")
    config = checker.config
    if config.unique is not None:
        u = config.unique
        parts.append(f"unique {u.field} within {u.horizon} ({u.action})")
    if config.fields:
        parts.append(f"range/domain of {', '.join(config.fields)} ({config.on_violation})")
    return "; ".join(parts)
