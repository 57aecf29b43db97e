"""Ctrl-C and stop signals (`kill`; Slurm's SIGTERM at a time limit or `scancel`, and the SIGUSR2 that
submitit asks Slurm to send shortly before the limit) as one exception, so that every process of a run or
a sweep ends the same way: finished work kept, MLflow runs KILLED, exit code 128 + signal number."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import psutil

# The signal that stopped this process, for exit hooks that run after the exception is gone.
stopped_by: int | None = None
_on_stop: list[Callable[[], None]] = []
STOP_MARK = "STOPPED"  # in a sweep folder: the launcher was stopped, jobs not yet started must not start


def on_stop(callback: Callable[[], None]) -> None:
    """Run ``callback`` first thing when a stop signal arrives (before the children are told)."""
    _on_stop.append(callback)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or a stop signal; the exit code is 128 + ``signum``."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# SIGUSR2: submitit's jobs ask Slurm for it `signal_delay_s` before the time limit (to checkpoint; a
# benchmark keeps its finished passes and ends its run while there is time to log it).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
CHILDREN_GRACE_S = 60.0  # how long a sweep's workers get to keep their finished passes
RESEND_DELAY_S = 0.05  # a signal that landed where it could not raise is sent again this much later


def _interrupt(signum: int, frame: object) -> None:
    global stopped_by
    stopped_by = signum
    for callback in _on_stop:
        callback()
    _stop_children(signum)
    raise Interrupted(signum)


def _stop_children(signum: int) -> None:
    """Pass the signal on to this process's children (a parallel sweep's workers) and wait for them, so
    that each keeps its finished passes and ends its MLflow run before the launcher goes (joblib would
    otherwise kill them outright)."""
    children = psutil.Process().children()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signum)
    psutil.wait_procs([c for c in children if not _pool_helper(c)], timeout=CHILDREN_GRACE_S)


def _pool_helper(child: psutil.Process) -> bool:
    """A process pool's helper that runs no job (loky's resource tracker ignores stop signals and lives as
    long as its pool): waiting for it would only spend CHILDREN_GRACE_S."""
    try:
        return any("resource_tracker" in part for part in child.cmdline())
    except psutil.Error:
        return False


@contextlib.contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """Within the block, the stop signals raise ``Interrupted`` in the main thread; the previous
    handlers come back after it (a pooled worker, joblib's, must stay stoppable)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    previous_hook, sys.unraisablehook = sys.unraisablehook, _deliver_again(sys.unraisablehook)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook


def _deliver_again(
    previous: Callable[[sys.UnraisableHookArgs], object],
) -> Callable[[sys.UnraisableHookArgs], None]:
    """A signal that lands in a weakref callback or a ``__del__`` raises where Python cannot propagate:
    it would print "Exception ignored ... Traceback" and be lost. Send it again a moment later, so that
    it arrives after the hook has returned and raises at the next point where it can (seen: SIGTERM to a
    parallel sweep's launcher); raised within the hook, it would only be ignored again."""

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            resend = threading.Timer(RESEND_DELAY_S, os.kill, (os.getpid(), unraisable.exc_value.signum))
            resend.daemon = True
            resend.start()
        else:
            previous(unraisable)

    return hook
