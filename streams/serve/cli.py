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


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON (the body of GET /v1/registry)")
def registry(config: Path, as_json: bool) -> None:
    """List feature group versions with their status and lineage.

    \b
    active       the version serving reads (activated, or the lowest configured)
    ready        configured; backfilled, or deployed longer than the group's TTL ago
    backfilling  driftline backfill is running
    warming      configured; not ready yet
    retired      recorded in Redis by a worker, no longer in the config
    """
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


async def _read_deployed(
    settings: Settings, names: list[str]
) -> tuple[list[DeployedVersion], list[str]]:
    from driftline.sinks.registry_store import read_deployed

    redis_cfg = settings.redis
    client = redis_client(settings)
    try:
        return await read_deployed(client, redis_cfg.key_prefix, names)
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
