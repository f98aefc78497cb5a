"""The observer: every SAMPLE_INTERVAL it records a sample, rolls up and prunes, marks finished
backfills, judges the alert rules, sends due notifications and beats its heartbeat.

It runs as a thread beside each change-capture run (`beside`, called by
`sync.tasks.capture_changes`), so it keeps going whenever the django-q2 cluster runs — dashboard
open or not — without holding a worker of its own: django-q2's scheduler looks at schedules
only every 30 s, too slow for a 15 s cadence, and a task of its own would take a worker from
the drains. A thread, not the capture loop itself, because pings and webhook calls can take
seconds and capture applies HIGH priority changes between its polls. Overlapping capture runs
each start one; the `observer` lease (a WorkerLease) lets one of them work at a time, and
epoch-aligned samples make a hand-over harmless. `manage.py observe` runs it in the foreground.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import connections
from django.utils import timezone

from sync import backfill
from sync.models import WorkerLease
from sync.observe import alerting, counters, delivery, health, readings, samples
from sync.observe.counters import SYNC_ERRORS
from sync.observe.models import Heartbeat

log = logging.getLogger(__name__)

LEASE = "observer"


@dataclass
class TickResult:
    at: datetime
    sampled: bool = False
    rolled_up: int = 0
    pruned: int = 0
    opened: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def report_if_stopped(now: datetime | None = None) -> dict:
    """The observer cannot report its own death: `sync.tasks.upkeep` (every 5 minutes, on any
    worker) judges the heartbeat rule when the observer's heartbeat is stale, and sends what that
    opens or resolves. (When the whole cluster is down, /readyz says so and Prometheus' heartbeat
    rule fires; a probe never writes.)"""
    changes = alerting.watch_the_watcher(readings.read(now or timezone.now()))
    if not changes or not (changes.opened or changes.resolved):
        return {}
    return {"opened": [a.rule for a in changes.opened], "resolved": [a.rule for a in changes.resolved],
            "deliveries": delivery.deliver_due()}


def tick(owner: str, now: datetime | None = None) -> TickResult:
    """One check. Each step's failure is logged, counted and kept on the heartbeat; the rest go on."""
    now = now or timezone.now()
    result = TickResult(now)

    def step(name, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 — one failing step must not stop the others
            log.exception("observer: %s failed", name)
            SYNC_ERRORS.labels("observe").inc()
            result.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
            return None

    reading = step("reading", lambda: readings.read(now, observer_alive=True))
    services = step("pinging services", lambda: {s.name: s for s in health.check_services()})
    step("heartbeat", lambda: Heartbeat.beat(readings.OBSERVER, owner, at=now.isoformat(),
                                             services=health.as_dicts((services or {}).values())))
    step("backfills", lambda: backfill.settle(now))
    if reading is not None:
        result.sampled = bool(step("sample", lambda: samples.record(now, reading=reading)))
        changes = step("alert rules", lambda: alerting.evaluate(reading, services, now=now))
        if changes:
            result.opened = [a.rule for a in changes.opened]
            result.resolved = [a.rule for a in changes.resolved]
    result.rolled_up = step("rollup", lambda: samples.rollup(now)) or 0
    if result.rolled_up:  # every five minutes
        result.pruned = step("retention", lambda: samples.prune(now)) or 0
        step("metric files", counters.fold_dead_processes)
    result.deliveries = step("deliveries", lambda: delivery.deliver_due()) or {}
    if result.errors:
        step("heartbeat", lambda: Heartbeat.beat(readings.OBSERVER, owner, at=now.isoformat(), errors=result.errors,
                                                 services=health.as_dicts((services or {}).values())))
    return result


def run(owner: str, *, seconds: float | None = None, stop=lambda: False) -> int:
    """Tick at every interval boundary while holding the observer lease, for `seconds` (or until
    `stop()`). Returns the number of ticks."""
    interval = settings.SAMPLE_INTERVAL
    lease_seconds = max(60.0, 4 * interval)
    deadline = None if seconds is None else time.monotonic() + seconds
    ticks, held, last = 0, False, None
    try:
        while not stop() and (deadline is None or time.monotonic() < deadline):
            try:
                held = (WorkerLease.renew(LEASE, owner, lease_seconds) if held
                        else WorkerLease.take([LEASE], owner, lease_seconds) is not None)
            except Exception:  # noqa: BLE001 — a busy database: try again at the next boundary
                log.exception("observer: could not take or renew its lease")
                SYNC_ERRORS.labels("observe").inc()
                held = False
            boundary = samples.aligned(timezone.now(), interval)
            if held and boundary != last:
                tick(owner)
                ticks += 1
                last = boundary
            # Sleep to the next boundary (a non-holder checks back sooner to take over quickly).
            wait = interval - time.time() % interval + 0.05
            if not held:
                wait = min(wait, 5.0)
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0))
            _sleep(wait, stop)
    finally:
        if held:
            with contextlib.suppress(Exception):
                WorkerLease.release(LEASE, owner)
    return ticks


def _sleep(seconds: float, stop) -> None:
    end = time.monotonic() + seconds
    while not stop() and time.monotonic() < end:
        time.sleep(min(0.25, end - time.monotonic()))


@contextlib.contextmanager
def beside(owner: str, stop=lambda: False):
    """Run the observer in a thread while the body runs (when OBSERVE_BESIDE_CAPTURE is on)."""
    if not settings.OBSERVE_BESIDE_CAPTURE:
        yield None
        return
    finished = threading.Event()

    def body():
        try:
            run(f"{owner}:observer", stop=lambda: finished.is_set() or stop())
        except Exception:  # noqa: BLE001 — capture must outlive its observer
            log.exception("observer thread stopped")
            SYNC_ERRORS.labels("observe").inc()
        finally:
            connections.close_all()  # this thread's own connection

    thread = threading.Thread(target=body, name="observer", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        finished.set()
        thread.join(timeout=settings.ALERT_WEBHOOK_TIMEOUT + 10)
