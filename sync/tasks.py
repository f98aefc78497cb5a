"""django-q2 entry points, referenced by dotted path from schedules and `async_task`.

Schedules (created by `manage.py setup_schedules`, never at import time) start the change
poller and a drain every minute. django-q2's scheduler looks at due schedules only every 30
seconds, so a "every minute" task starts 60 to 90 s after the previous one: runs last RUN_SECONDS,
longer than that, so one is always running. Overlapping runs are safe: only the holder of the
cursor lease polls (the next run takes over within a poll interval when it ends), and drains
claim work under row locks.

The poller applies HIGH priority changes itself, right after each poll (`worker.apply_urgent`),
so a CISA KEV change never waits behind a batch of lower-priority embeddings; it kicks a drain
(debounced per process) for the rest, so write-through latency does not wait for the schedule.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache

from sync import capture, queue, worker
from sync.apply import ApplyCounts
from sync.stores import vector_store

log = logging.getLogger(__name__)

KICK_KEY = "sync:drain-kicked"
RUN_SECONDS = 95  # > the 90 s a one-minute schedule can take to start the next run


def kick_drain() -> bool:
    """Ask the cluster for a drain now, at most once per second per process."""
    if not settings.SYNC_KICK_DRAIN or not cache.add(KICK_KEY, 1, timeout=1):
        return False
    from django_q.tasks import async_task

    async_task("sync.tasks.drain_queue", RUN_SECONDS, group="sync-drain", q_options={"timeout": RUN_SECONDS + 60})
    return True


def drain_queue(seconds: float = RUN_SECONDS) -> dict:
    """Apply ready events; return once the queue has been idle for a flush interval."""
    counts = worker.drain(max_seconds=seconds, idle_exit=settings.SYNC_FLUSH_INTERVAL + 1, flush=True)
    return asdict(counts)


def capture_changes(seconds: float = RUN_SECONDS, stop=lambda: False) -> dict:
    """Poll Neo4j for changes every CAPTURE_INTERVAL seconds; apply HIGH priority work at once."""
    name = worker.worker_name()
    urgent = ApplyCounts()

    def after_poll(result: capture.CaptureResult) -> None:
        urgent.add(worker.apply_urgent(name))
        if result.enqueued:
            kick_drain()

    result = capture.run(name, seconds=seconds, after_poll=after_poll, stop=stop)
    return {**asdict(result), "urgent": asdict(urgent)}


def compact_vectors() -> dict:
    store = vector_store()
    compact = getattr(store, "compact", None)
    if compact is None:
        return {"compacted": False, "reason": f"{type(store).__name__} needs no compaction"}
    return {"compacted": True, "result": str(compact())}


def purge_finished_events(days: int = 7) -> int:
    return queue.purge_finished(timedelta(days=days))


def reconcile_incremental() -> dict:
    from sync import reconcile
    from sync.models import ReconcileRun

    run = reconcile.incremental(trigger=ReconcileRun.Trigger.SCHEDULE)
    return {"run": run.pk, "drift": run.drift, "repaired": run.repaired}


def reconcile_full() -> dict:
    from sync import reconcile
    from sync.models import ReconcileRun

    run = reconcile.full(trigger=ReconcileRun.Trigger.SCHEDULE)
    return {"run": run.pk, "drift": run.drift, "repaired": run.repaired}
