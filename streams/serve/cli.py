"""``driftline serve`` and ``driftline registry``: plain click commands.

They are registered on the main group by :mod:`driftline.streams.cli.main`
(``main.add_command(serve)``, ``main.add_command(registry)``), which also
wraps them in its user-error handling.  This module cannot import the main
group for that (the main group imports this module), so the commands raise
:class:`~driftline.errors.DriftlineError` and leave the message to the
caller.  Run
directly (``python -m driftline.streams.serve.cli serve -c FILE``), :func:`_main` does
the same: a message on stderr and exit code 2, never a traceback.

The heavy imports (contract compilers, River through
``driftline.streams.sources``, FastAPI and uvicorn) happen inside the
commands, so registering them keeps ``driftline --help`` fast.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from driftline.errors import redact
from driftline.sinks.redis_client import REDIS_ERRORS
from driftline.streams.cli.options import config_option
from driftline.streams.clients import redis_client
from driftline.streams.errors import DriftlineError, exit_with
from driftline.streams.settings import Settings, load_settings

if TYPE_CHECKING:
    from driftline.features.registry import DeployedVersion


@click.command()
@config_option
def serve(config: Path) -> None:
    """Serve online features and the registry over HTTP.

    Listens on serve.host:serve.port (default 0.0.0.0:8080); set
    DRIFTLINE_SERVE__TOKEN to require a bearer token on /v1.  Routes are
    described at /openapi.json.  Run as many replicas as traffic needs: they
    read Redis only and keep no state.
    """
    from driftline.streams.serve.app import run_serve
    from driftline.streams.serve.registry import load_catalog

    settings = load_settings(config)
    run_serve(settings, load_catalog(settings, str(config)))


@click.group(invoke_without_command=True)
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON (the body of GET /v1/registry)")
@click.pass_context
def registry(ctx: click.Context, config: Path, as_json: bool) -> None:
    """List feature group versions with their status and lineage.

    \b
    active       the version serving reads (activated, or the lowest configured)
    ready        configured; backfilled, or deployed longer than the group's TTL ago
    backfilling  driftline backfill is running
    warming      configured; not ready yet
    retired      recorded in Redis by a worker, no longer in the config

    `driftline registry activate GROUP VERSION` switches the served version.
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = config  # `registry -c FILE activate ...`: the subcommand's default
        return
    from driftline.features.catalog import build_registry
    from driftline.streams.serve.registry import format_table, load_catalog

    settings = load_settings(config)
    catalog = load_catalog(settings, str(config))
    deployed, problems = asyncio.run(_read_deployed(settings, catalog.names()))
    entries = build_registry(catalog, deployed, int(time.time() * 1000))
    for problem in problems:
        click.echo(f"driftline: warning: registry record skipped: {problem}", err=True)
    if as_json:
        doc = {"groups": [e.as_dict() for e in entries]}
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_table(entries))


@registry.command("activate")
@config_option
@click.option(
    "--force",
    is_flag=True,
    help="activate a version that is not ready yet (warming or backfilling)",
)
@click.argument("group")
@click.argument("version", type=click.IntRange(min=1))
@click.pass_context
def activate_command(
    ctx: click.Context, config: Path, force: bool, group: str, version: int
) -> None:
    """Serve VERSION of GROUP: driftline serve and FeatureClient read it within a second.

    Refused (exit code 2) unless the version is in the config, deployed by a
    worker with the config's definition, and ready (backfilled, or deployed
    longer than the group's TTL ago); --force activates a version that is not
    ready yet.  Prints the command that switches back.
    """
    source = ctx.get_parameter_source("config")
    if source is click.core.ParameterSource.DEFAULT and isinstance(ctx.obj, Path):
        config = ctx.obj
    try:
        click.echo(_activate(config, group, version, force))
    except DriftlineError as exc:
        exit_with(exc)


def _activate(config: Path, name: str, version: int, force: bool) -> str:
    from driftline.features.catalog import build_registry
    from driftline.streams.serve.registry import load_catalog

    settings = load_settings(config)
    catalog = load_catalog(settings, str(config))
    versions = catalog.versions(name)
    if not versions:
        configured = ", ".join(catalog.names()) or "none"
        raise DriftlineError(
            f"cannot activate {name} v{version}: no feature group {name!r} in {config} "
            f"(configured: {configured})"
        )
    listed = ", ".join(f"v{v}" for v in versions)
    if version not in versions:
        raise DriftlineError(
            f"cannot activate {name} v{version}: it is not in {config} (configured: {listed}); "
            "add it to feature_groups and start the workers with it first"
        )
    deployed, _ = asyncio.run(_read_deployed(settings, [name], scan=False))
    now_ms = int(time.time() * 1000)
    entries = {
        e.version: e
        for e in build_registry(catalog, deployed, now_ms)
        if e.name == name and e.status != "retired"
    }
    entry = entries[version]
    record = next((d for d in deployed if d.version == version), None)
    if record is None:
        raise DriftlineError(
            f"cannot activate {name} v{version}: it is not deployed (no worker has recorded it "
            "in Redis under prefix "
            f"{catalog.prefix!r}); start the workers with it in the config first"
        )
    if record.fingerprint != versions[version].fingerprint():
        raise DriftlineError(
            f"cannot activate {name} v{version}: it is deployed with another definition "
            f"(fingerprint {record.fingerprint[:12]}, {config}: "
            f"{versions[version].fingerprint()[:12]}); the config does not describe what "
            "its keys hold"
        )
    previous = next(e.version for e in entries.values() if e.active)
    if entry.active:
        return (
            f"{name} v{version} is already the active version"
            + (" (the lowest configured; no version was activated)" if not record.active else "")
            + "; nothing changed"
        )
    notes: list[str] = []
    if entry.status != "ready":
        if not force:
            raise DriftlineError(
                f"cannot activate {name} v{version}: not ready ({entry.status_detail}); "
                "activate it anyway with --force (reads of it are incomplete until then)"
            )
        notes.append(f"--force: activated although not ready ({entry.status_detail})")
    replaced = asyncio.run(_write_active(settings, name, version, previous))
    if replaced is not None and replaced != previous and replaced in versions:
        previous = replaced  # activated by someone else since the read above
    # the previous version was served and the workers keep writing it: it stays ready
    back = f"driftline registry activate -c {config} {name} {previous}"
    lines = [
        f"{name}: active version v{previous} -> v{version} (serve replicas and FeatureClient "
        "read it within a second)",
        *notes,
        f"switch back with: {back} (instant: v{previous} is written until it leaves the config)",
    ]
    return "\n".join(lines)


async def _write_active(
    settings: Settings, name: str, version: int, served: int | None
) -> int | None:
    from driftline.sinks.registry_store import activate

    client = redis_client(settings)
    try:
        return await activate(client, settings.redis.key_prefix, name, version, served)
    except REDIS_ERRORS as exc:
        raise DriftlineError(
            f"cannot write to Redis at {redact(settings.redis.url)}: {exc}"
        ) from None
    finally:
        await client.aclose()


async def _read_deployed(
    settings: Settings, names: list[str], *, scan: bool = True
) -> tuple[list[DeployedVersion], list[str]]:
    from driftline.sinks.registry_store import read_deployed

    redis_cfg = settings.redis
    client = redis_client(settings)
    try:
        return await read_deployed(client, redis_cfg.key_prefix, names, scan=scan)
    except REDIS_ERRORS as exc:
        raise DriftlineError(f"cannot read from Redis at {redact(redis_cfg.url)}: {exc}") from None
    finally:
        await client.aclose()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """driftline serving commands (also: driftline serve, driftline registry)."""


cli.add_command(serve)
cli.add_command(registry)


def _main() -> None:
    try:
        cli()
    except DriftlineError as exc:
        exit_with(exc)


if __name__ == "__main__":
    _main()
