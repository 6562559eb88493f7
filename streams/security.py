"""Secrets stay secret: bearer-token checks and redaction of printed values.

Two rules, both about what reaches a peer or a log:

* **Bearer tokens** are compared as bytes, in constant time, and anything
  that is not exactly ``Bearer <token>`` is a 401, whatever bytes a client
  sends.  aiohttp hands header values over as ``str`` decoded from UTF-8 with
  ``surrogateescape``, so a byte that is not UTF-8 (``b"Bearer \\xff"``)
  arrives as a lone surrogate; it is turned back into that byte here (a
  plain ``.encode()`` raises, and the request became a 500 with a traceback).
* **Printed values** (settings errors, ``check-config``, start-up and error
  log lines) go through :func:`redact` first: the user info of a URL
  (``redis://user:pass@host``) becomes ``***`` and so do query parameters
  that carry secrets (``?password=...``).  Settings that are secrets
  themselves (``SecretStr``) are never printed at all.
"""

from __future__ import annotations

import hmac
import re

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#'\"]*@")
# user:password@host without a scheme (a Kafka bootstrap list, a bare authority)
_BARE_USERINFO = re.compile(r"(?:^|(?<=[\s'\",=(\[]))[^\s/@'\",=]+:[^\s/@'\",]*@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pass|pwd|token|secret|api_key|apikey|access_token)=)"
    r"[^&;#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with URL credentials replaced by ``***``: safe to print or log."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    text = _BARE_USERINFO.sub("***@", text)
    return _SECRET_QUERY.sub(r"\g<key>***", text)


def bearer_matches(header: str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (constant time)."""
    try:
        given = (header or "").encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a character no byte sequence decodes to: not our token
        return False
    return hmac.compare_digest(given, b"Bearer " + token)
