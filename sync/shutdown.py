"""Stopping cleanly on SIGTERM, what systemd (to the whole process group), docker and bin/serve send.

A process that installs `handle_sigterm` records the request (`requested()`), and the long tasks
check it between steps: change capture between polls, a drain between batches (`sync.tasks`). A
request that arrives while the process is inside an *interruptible* call (`apply_events`, which
hands its claimed events back to the queue uncounted when interrupted, or a reconciliation run,
which then ends failed) raises `StopRequested` there, once, so that a long embedding batch does
not hold the shutdown up. Anywhere else nothing is raised: a claim, a poll or a lease update is
never cut in half, nor is the hand-back itself (nothing is raised while an exception is being
handled, e.g. django-q2's timeout, whose SIGALRM may come just before the sentinel's SIGTERM).

The request is kept for the life of the process: a django-q2 worker told to stop may still be
handed a task or two before its STOP pill, and those return at once (`{"skipped": ...}`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger(__name__)

_requested = threading.Event()
_interrupted = threading.Event()  # StopRequested raised already: a second signal only records
_redelivering = threading.Event()  # a signal that landed in a finalizer is to come again
REDELIVER_SECONDS = 0.02


class StopRequested(BaseException):  # noqa: N818 — like KeyboardInterrupt: `except Exception` must not catch it
    """Raised inside an interruptible call when the process is asked to stop."""


def requested() -> bool:
    """Has this process been asked to stop?"""
    return _requested.is_set()


def stop_if_requested() -> None:
    """Where an interruptible call sets its MARK: a stop recorded just before (too early to be
    raised) is raised now, so the call hands its work back instead of running to its end."""
    if _requested.is_set():
        _interrupted.set()
        raise StopRequested("stopped by SIGTERM")


# (module, function) of the calls a stop may interrupt: each hands back or records what it had
# under way when an exception of any kind leaves it. Matched by name so that the handler never
# imports (it may run in the middle of an import). Each sets the local MARK to True as the first
# statement of the `try` that hands its work back, and to False as the last: a signal landing
# outside (on the call's first instruction, or in the `finally` that records its end) is only
# recorded, as anywhere else, and `stop_if_requested()` after the MARK raises one recorded before.
INTERRUPTIBLE = frozenset({("sync.apply", "apply_events"), ("sync.reconcile.reconciler", "execute")})
MARK = "stoppable"


# Frames an exception cannot leave: Python reports it as "Exception ignored in ..." and carries on
# (a finalizer the garbage collector runs in the middle of the batch, e.g. the Neo4j driver's).
SWALLOWING = frozenset({"__del__"})


def _inside_interruptible(frame: FrameType | None) -> bool | None:
    """True inside an interruptible call's MARK; None when also inside a finalizer, where a raise
    would be swallowed (the stop must be raised once the finalizer has returned)."""
    swallowed = False
    while frame is not None:
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) in INTERRUPTIBLE:
            inside = frame.f_locals.get(MARK) is True
            return None if inside and swallowed else inside
        swallowed = swallowed or frame.f_code.co_name in SWALLOWING
        frame = frame.f_back
    return False


def handle_sigterm(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler: record the request; interrupt an interruptible call, once."""
    _requested.set()
    # Never while an exception is being handled: that is the interrupted call handing its work
    # back already (after django-q2's timeout, say), and raising again would cut that short.
    if not _interrupted.is_set() and sys.exc_info()[0] is None:
        inside = _inside_interruptible(frame)
        if inside is None:
            # In a finalizer the raise would be swallowed and the stop lost (the batch would run
            # on until the worker is killed): the signal comes again in a moment, after it.
            _redeliver(signum)
            return
        if inside:
            _interrupted.set()
            log.warning("SIGTERM: interrupting the current batch (its events go back to the queue)")
            raise StopRequested("stopped by SIGTERM")
    log.info("SIGTERM: stopping after the current step")


def _redeliver(signum: int) -> None:
    if _redelivering.is_set():
        return
    _redelivering.set()

    def again() -> None:
        _redelivering.clear()
        os.kill(os.getpid(), signum)

    timer = threading.Timer(REDELIVER_SECONDS, again)
    timer.daemon = True
    timer.start()


def install() -> None:
    """Handle SIGTERM in this process from now on (main thread only, as Python requires), and
    keep django-q2's task timeout from being lost in a finalizer (`keep_timeouts`)."""
    signal.signal(signal.SIGTERM, handle_sigterm)
    keep_timeouts()


def _in_finalizer(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_name in SWALLOWING:
            return True
        frame = frame.f_back
    return False


def keep_timeouts() -> None:
    """django-q2 ends a task that runs past its timeout by raising TimeoutException from its
    SIGALRM handler, wherever the task is. Raised inside a finalizer (the Neo4j driver's, run by
    the garbage collector in the middle of a batch or a reconciliation), it is swallowed ("Exception
    ignored in ...") and the task runs on, past its timeout, until the sentinel kills the worker
    three seconds later, without the hand-back of its batch (which then costs an attempt). From
    here on such an alarm comes again REDELIVER_SECONDS later, once the finalizer has returned."""
    from django_q.timeout import TimeoutHandler

    raise_timeout = TimeoutHandler.raise_timeout_exception
    if getattr(raise_timeout, "keeps_timeouts", False):
        return

    def raise_timeout_exception(self, signum: int, frame: FrameType | None) -> None:
        if _in_finalizer(frame):
            # alarm() and ITIMER_REAL are one timer: TimeoutHandler's exit (alarm(0)) cancels this
            # too, should the task end meanwhile.
            signal.setitimer(signal.ITIMER_REAL, REDELIVER_SECONDS)
            return
        raise_timeout(self, signum, frame)

    raise_timeout_exception.keeps_timeouts = True
    TimeoutHandler.raise_timeout_exception = raise_timeout_exception
