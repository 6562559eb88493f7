"""A small, blocking Confluent Schema Registry client (``GET /schemas/ids/{id}``).

Blocking on purpose: lookups are rare (once per new schema id) and run in a
worker thread (``asyncio.to_thread``), so the standard library is enough and
no HTTP client dependency is needed in this pure layer.  Failures are cached
for ``negative_ttl_s`` so an unknown id in a hot topic does not become one
HTTP request per record.

Redirects are refused, not followed: urllib would send the ``Authorization``
header (the registry password) to wherever a redirect points, another host
included.  A registry behind a redirect is configured with its final URL.
Credentials in the URL itself (``https://user:pass@host``) are never logged
(:func:`driftline.errors.redact`).
"""

from __future__ import annotations

import base64
import logging
import time
import urllib.error
import urllib.request
from email.message import Message
from typing import IO, NoReturn

import orjson

from driftline.errors import redact
from driftline.schemas.avro_contract import AvroContract
from driftline.schemas.exceptions import SchemaError

log = logging.getLogger(__name__)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Every 3xx becomes an error: the request, auth header included, goes nowhere else."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> NoReturn:
        raise urllib.error.HTTPError(
            req.full_url,
            code,
            f"redirected to {redact(newurl)}; redirects are not followed (the request "
            "carries the registry credentials): set schema_registry.url to the final URL",
            headers,
            fp,
        )


class SchemaRegistryClient:
    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
        negative_ttl_s: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._shown_url = redact(self.url)
        self._opener = urllib.request.build_opener(_RefuseRedirects)
        self._timeout = timeout_s
        self._negative_ttl = negative_ttl_s
        self._failed: dict[int, float] = {}
        self._auth: str | None = None
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._auth = f"Basic {token}"

    def fetch(self, schema_id: int) -> AvroContract | None:
        """The contract for ``schema_id``, or ``None`` when the registry cannot give it."""
        failed_at = self._failed.get(schema_id)
        if failed_at is not None and time.monotonic() - failed_at < self._negative_ttl:
            return None
        request = urllib.request.Request(
            f"{self.url}/schemas/ids/{schema_id}",
            headers={"Accept": "application/vnd.schemaregistry.v1+json, application/json"},
        )
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                body = orjson.loads(response.read())
            schema_type = body.get("schemaType", "AVRO")
            if schema_type != "AVRO":
                raise SchemaError(
                    f"registry id {schema_id}", f"schema type {schema_type} is not supported"
                )
            contract = AvroContract.from_bytes(
                f"{self._shown_url}/schemas/ids/{schema_id}", body["schema"].encode()
            )
        except (urllib.error.URLError, OSError, ValueError, KeyError, SchemaError) as exc:
            # The URL is logged without its password; the configured one travels in a header.
            log.warning(
                "schema registry lookup of id %d at %s failed: %s", schema_id, self._shown_url, exc
            )
            self._failed[schema_id] = time.monotonic()
            return None
        self._failed.pop(schema_id, None)
        return contract
