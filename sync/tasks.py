"""django-q2 entry points, referenced by dotted path from schedules and `async_task`.

Schedules (created by `manage.py setup_schedules`, never at import time) start the change
poller and a drain every minute; each runs for just under a minute. Enqueues also kick a drain
right away (debounced per process) so write-through latency does not wait for the schedule.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache

from sync import capture, queue, worker
from sync.stores import vector_store

log = logging.getLogger(__name__)

KICK_KEY = "sync:drain-kicked"
RUN_SECONDS = 55  # a scheduled run ends before the next one-minute tick starts another


def kick_drain() -> bool:
    """Ask the cluster for a drain now, at most once per second per process."""
    if not settings.SYNC_KICK_DRAIN or not cache.add(KICK_KEY, 1, timeout=1):
        return False
    from django_q.tasks import async_task

    async_task("sync.tasks.drain_queue", RUN_SECONDS, group="sync-drain", q_options={"timeout": 90})
    return True


def drain_queue(seconds: float = RUN_SECONDS) -> dict:
    """Apply ready events; return once the queue has been idle for a flush interval."""
    counts = worker.drain(max_seconds=seconds, idle_exit=settings.SYNC_FLUSH_INTERVAL + 1, flush=True)
    return asdict(counts)


def capture_changes(seconds: float = RUN_SECONDS) -> dict:
    """Poll Neo4j for changes every CAPTURE_INTERVAL seconds for about a minute."""
    result = capture.run(worker.worker_name(), seconds=seconds, on_enqueued=kick_drain)
    return asdict(result)


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
