"""Ctrl-C and SIGTERM stop a steelsight command within seconds, cleanly.

Left alone, a Ctrl-C reached the Prefect server that the command had started (same process
group) as well as the command; the command then spent minutes retrying to report its
crash to the dead server and printed hundreds of lines of tracebacks, and a SIGTERM to the
command alone could leave its children (the imprint training process, Dask workers, the
Prefect server) running. So the command line installs ``stop_on_signals``: on the first
SIGINT or SIGTERM it says what was interrupted, terminates its child processes, runs the
cleanups registered with ``on_interrupt`` (temporary folders) and exits at once with
128 + the signal number. Inside ``critical`` (registering a model: an MLflow run, a new
version, its decision and the alias) the signal waits until the section is done, so a
version is never left half-registered.

A flow run under a Prefect worker (deployments) keeps Prefect's own handling: only the
command line installs this.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

_what = ""
_nothing_done = ""
_depth = 0
_pending: int | None = None
_cleanups: list[Callable[[], None]] = []
_done: list[str] = []  # what a critical section completed, for the last words
# reentrant: the handler runs in the main thread, which may hold the lock when it fires
_lock = threading.RLock()


def stop_on_signals(what: str, nothing_done: str = "") -> None:
    """Install the handlers for this process (main thread only); ``what`` names the
    command in the message (``train segmentation``), ``nothing_done`` says what an
    interruption means when no critical section completed."""
    global _what, _nothing_done
    if threading.current_thread() is not threading.main_thread():
        return
    _what, _nothing_done = what, nothing_done
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handle)


@contextmanager
def critical() -> Iterator[list[str]]:
    """A section a signal must not cut: the signal is acted on when it ends. The section
    appends what it achieved to the list it is given (``registered steelsight-marking
    version 3``), for the message."""
    global _depth
    with _lock:
        _depth += 1
    achieved: list[str] = []
    try:
        yield achieved
    finally:
        _done.extend(achieved)
        with _lock:
            _depth -= 1
            act = _depth == 0 and _pending is not None
        if act:
            _stop(_pending)


@contextmanager
def on_interrupt(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` if the process is interrupted while the block runs (the block's own
    ``finally`` does not run then)."""
    _cleanups.append(cleanup)
    try:
        yield
    finally:
        if cleanup in _cleanups:
            _cleanups.remove(cleanup)


@contextmanager
def cleaned_up(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` when the block ends, however it ends: normally, by an exception, or
    by an interrupt."""
    with on_interrupt(cleanup):
        try:
            yield
        finally:
            cleanup()


def _handle(signum: int, frame) -> None:
    global _pending
    with _lock:
        if _depth > 0:
            if _pending is None:
                _pending = signum
                _say(f"{signal.Signals(signum).name}: stopping once the registration ends")
            return
    _stop(signum)


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"\nsteelsight {_what}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _terminate_children(grace_s: float = 3.0) -> None:
    """SIGTERM to every child process, SIGKILL to those still there after ``grace_s``,
    then wait until those are gone too (reaped), so that nothing of the command is left
    when it exits; a second pass for any child started meanwhile."""
    import psutil

    for _ in range(2):
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        if not children:
            return
        for child in children:
            with suppress(psutil.Error):
                child.terminate()
        _, alive = psutil.wait_procs(children, timeout=grace_s)
        for child in alive:
            with suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=grace_s)


def _stop(signum: int) -> None:
    name = signal.Signals(signum).name
    for signum_ in (signal.SIGINT, signal.SIGTERM):  # a second signal changes nothing
        signal.signal(signum_, signal.SIG_IGN)
    done = f"done before it: {'; '.join(_done)}" if _done else _nothing_done
    _say(f"interrupted by {name}, stopped" + (f"; {done}" if done else ""))
    _terminate_children()
    for cleanup in reversed(_cleanups):
        try:
            cleanup()
        except Exception as error:  # the exit must happen whatever a cleanup does
            _say(f"cleanup failed: {error}")
    logging.shutdown()
    os._exit(128 + signum)
