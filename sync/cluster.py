"""The django-q2 cluster, made to stop cleanly on SIGTERM (`manage.py workers`; bin/serve runs it).

django-q2 1.11's `qcluster` does not survive a SIGTERM sent to its whole process group, which is
what systemd does: its sentinel and workers reset SIGTERM to the default action and die at once,
in-flight batches and all, and the main process then hangs for ever in `stop_event.set()` on a
lock the dead sentinel held. Here every process of the cluster handles SIGTERM instead
(`sync.shutdown`), so the stop goes the orderly way django-q2 has for it:

- the main process sets the stop event (once, however many signals come) and waits for the
  sentinel;
- the sentinel passes SIGTERM on to its workers (they may not have had one: `kill <main pid>`),
  stops the pusher, gives each worker its STOP pill and waits for them, then stops the monitor,
  which records the last results;
- a worker in one of our long tasks stops it at its next step, or at once inside a batch, which is
  handed back to the queue without an attempt counted (`sync.shutdown`);
- a worker still busy `STOP_GRACE_SECONDS` after the stop began is killed: its events are claimed
  again after the visibility timeout, the one case that costs them an attempt.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from multiprocessing import Event

from django_q.cluster import Cluster, Sentinel, get_mp_context

from sync import shutdown

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 20  # then busy workers are killed; the whole stop stays within 30 s


class CleanSentinel(Sentinel):
    def start(self) -> None:
        # Runs in the sentinel process before it forks the pusher, monitor and workers: they all
        # inherit the handler, in place of django-q2's SIG_DFL.
        shutdown.install()
        super().start()

    def stop(self) -> None:
        for process in list(self.pool):
            if process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        watchdog = threading.Thread(target=self._kill_stragglers, name="stop-watchdog", daemon=True)
        watchdog.start()
        super().stop()

    def _kill_stragglers(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            if not any(process.is_alive() for process in list(self.pool)):
                return
            time.sleep(0.2)
        for process in list(self.pool):
            if process.is_alive():
                log.critical("worker %s still busy %s s after the stop began: killed (its events are claimed "
                             "again after the visibility timeout)", process.pid, STOP_GRACE_SECONDS)
                process.kill()


class CleanCluster(Cluster):
    """django-q2's Cluster with `CleanSentinel`, and a signal handler that runs its stop once."""

    def start(self) -> int:
        # Cluster.start with the sentinel class swapped (django-q2 names it inside the method).
        self.stop_event = Event()
        self.start_event = Event()
        self.sentinel = get_mp_context().Process(
            target=CleanSentinel, name=f"Process-{uuid.uuid4().hex}",
            args=(self.stop_event, self.start_event, self.cluster_id, self.broker, self.timeout),
        )
        self.sentinel.start()
        log.info("Q Cluster %s starting", self.name)
        while self.start_event and not self.start_event.is_set():
            if not self.sentinel.is_alive():
                if self.sentinel.exitcode == 0:
                    break  # stopped by a signal while starting
                raise RuntimeError(f"Q Cluster {self.name} failed to start: sentinel exited "
                                   f"with code {self.sentinel.exitcode}")
            time.sleep(0.1)
        return self.pid

    def sig_handler(self, signum, frame) -> None:
        # A second SIGTERM (bin/serve passes on the one the group got) must not re-enter stop():
        # setting the stop event again from inside its own lock would deadlock.
        if getattr(self, "_stopping", False):
            return
        self._stopping = True
        log.info("Q Cluster %s got signal %s: stopping", self.name, signal.Signals(signum).name)
        self.stop()
