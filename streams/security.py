"""Secrets stay secret: bearer-token checks and redaction of printed values.

Two rules, both about what reaches a peer or a log:

* **Bearer tokens** are compared as bytes, in constant time, and anything
  that is not exactly ``Bearer <token>`` is a 401, whatever bytes a client
  sends.  aiohttp hands header values over as ``str`` decoded from UTF-8 with
  ``surrogateescape``, so a byte that is not UTF-8 (``b"Bearer \\xff"``)
  arrives as a lone surrogate; it is turned back into that byte here (a
  plain ``.encode()`` raises, and the request became a 500 with a traceback).
* **Printed values** (settings errors, ``check-config``, start-up and error
  log lines) go through :func:`driftline.errors.redact` first: the user info
  of a URL (``redis://user:pass@host``) becomes ``***`` and so do query
  parameters that carry secrets (``?password=...``).  Settings that are
  secrets themselves (``SecretStr``) are never printed at all.
"""

from __future__ import annotations

import hmac

__all__ = ["bearer_matches"]


def bearer_matches(header: str | bytes | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (constant time).

    ``header`` is the raw bytes (ASGI) or text decoded with ``surrogateescape``
    (aiohttp), so a token that is not ASCII is compared byte for byte.
    """
    if isinstance(header, bytes):
        return hmac.compare_digest(header, b"Bearer " + token)
    try:
        given = (header or "").encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a character no byte sequence decodes to: not our token
        return False
    return hmac.compare_digest(given, b"Bearer " + token)
