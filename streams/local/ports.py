"""Loopback TCP ports: a free one, whether something listens, and whose listener it is."""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["LOOPBACK", "find_free_port", "owns_listener", "tcp_accepts"]

#: Every local server binds here, never on a public interface.
LOOPBACK = "127.0.0.1"


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0), so parallel test sessions do not
    collide the way fixed ports do.  Another process may still take it before the
    server binds; :meth:`driftline.streams.local.server.ServerProcess.start`
    retries with a new port then.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:*port*."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP *port* (Linux ``/proc/net``), ``None`` elsewhere."""
    found: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                found.add(inode)
    return found if readable else None


def owns_listener(pid: int, port: int) -> bool | None:
    """Whether process *pid* holds the socket listening on *port*.

    Guards the readiness probe against a *different* server on the same port
    (an explicit ``--port 6379`` while a system Redis runs): without it, that
    server's PONG would be taken for ours while ours is dying of EADDRINUSE.
    ``None`` when the platform cannot tell (no ``/proc``): the caller then
    trusts the probe.
    """
    inodes = _listening_inodes(port)
    fd_dir = Path(f"/proc/{pid}/fd")
    if inodes is None or not fd_dir.is_dir():
        return None
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
