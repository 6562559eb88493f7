"""Child processes tied to the life of the process that started them (Linux, POSIX).

Shared by the production supervisor (``driftline worker --processes N``) and
the local stack (the embedded servers, ``driftline dev``'s worker):

* ``prctl(PR_SET_PDEATHSIG, sig)`` (Linux) makes the kernel signal a child when
  its parent dies, even by SIGKILL, when no Python code gets to run
  (:func:`pdeathsig_preexec`, :func:`child_preexec`);
* the signal follows the *thread* that forked the child, not the process, so
  children that must outlive a short-lived thread are forked from the main
  thread or from a daemon thread that ends only with the process
  (:data:`SPAWNER`);
* a child started with ``start_new_session=True`` leads its own process group,
  which :func:`signal_tree` signals as a whole (a terminal's Ctrl-C stays away
  from it, so the parent sees ``KeyboardInterrupt`` alone and stops it in order).

No driftline imports: production code uses it without importing the local stack.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "SPAWNER",
    "Spawner",
    "child_preexec",
    "freeze_startup",
    "pdeathsig_preexec",
    "signal_tree",
]

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def freeze_startup(thresholds: tuple[int, int, int]) -> None:
    """Freeze what start-up made and collect the young generation less often.

    For a long-running program (the worker, ``driftline serve``): the objects
    of start-up (modules, the app) live until exit, so frozen they are out of
    the collector's reach and a full collection scans only what the work
    allocates.  Reference cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux, ``None`` elsewhere.

    Looked up in the parent, before any fork, so the child does no dynamic
    loading between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def pdeathsig_preexec(
    parent_pid: int, sig: signal.Signals = signal.SIGKILL
) -> Callable[[], None] | None:
    """Build the function run in the child between fork and exec.

    It asks the kernel to send ``sig`` to the child when the parent dies.  If
    the parent is already gone (it died between fork and prctl), the child
    signals itself.
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return preexec


def child_preexec(parent_pid: int) -> Callable[[], None] | None:
    """:func:`pdeathsig_preexec` with SIGKILL: servers die with the process that started them."""
    return pdeathsig_preexec(parent_pid, signal.SIGKILL)


class Spawner:
    """Runs ``Popen`` on a thread that lives as long as the process.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not
    the process.  A server started from a worker thread (``asyncio.to_thread``, a
    thread pool) would be killed as soon as that thread ended.  So children are
    forked either from the main thread or from this daemon thread, which only
    ends with the process itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], T]) -> T:
        """Call *fn* on a thread whose exit means the process is exiting."""
        if threading.current_thread() is threading.main_thread():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._ensure_thread()
        self._jobs.put((fn, future))
        return future.result()

    def _ensure_thread(self) -> None:
        with self._lock:
            # After os.fork() the old thread object reports not alive: start anew.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="driftline-embedded-spawner", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


#: The process's one spawner thread.
SPAWNER = Spawner()


def signal_tree(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send *sig* to the child's process group (its own session), or the child."""
    if proc.poll() is not None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        else:  # pragma: no cover - non-POSIX
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - pgid reused by someone else
        proc.send_signal(sig)
