"""django-q2 entry points, referenced by dotted path from schedules and `async_task`.

Schedules (created by `manage.py setup_schedules`, never at import time) start the change
poller and a drain every minute. django-q2's scheduler looks at due schedules only every 30
seconds, so a "every minute" task starts 60 to 90 s after the previous one: capture runs last
RUN_SECONDS, longer than that, so one is always polling. Overlapping runs are safe: only the
holder of the cursor lease polls, and the next run takes over within a poll interval when it ends.

The poller applies HIGH priority changes itself, right after each poll (`worker.apply_urgent`),
so a CISA KEV change never waits behind a batch of lower-priority embeddings, and kicks a drain
(at most once a second per process) for the rest.

Drains hold one of SYNC_DRAIN_WORKERS slots (`WorkerLease`): a drain that finds every slot taken
returns at once, so kicks cannot pile up drains that would compete for the CPU or keep the
poller's next run waiting for a worker. A drain that reaches RUN_SECONDS with work still ready
kicks its successor before it returns.

A SIGTERM stops these tasks promptly (`stoppable`, `sync.shutdown`): the cluster's processes
handle it (`manage.py workers`, `sync.cluster`), capture and drains stop at their next step, and a
batch being applied is interrupted and handed back to the queue.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connections

from sync import backfill, capture, embedding, queue, shutdown, worker, writes
from sync.apply import ApplyCounts
from sync.models import AuditEntry, ReconcileRun, WorkerLease
from sync.observe import observer
from sync.reconcile import reconciler as reconcile
from sync.resync import resync_labels as enqueue_labels
from sync.search import canary
from sync.stores import vector_store

log = logging.getLogger(__name__)

KICK_KEY = "sync:drain-kicked"
RUN_SECONDS = 95  # > the 90 s a one-minute schedule can take to start the next run
DRAIN_LEASE_SECONDS = 60  # a drain slot whose holder died is free again after this
DRAIN_RENEW_SECONDS = 10  # renewed by a thread of the drain, also in the middle of a batch
# The only functions django-q2 may run: the schedules of `manage.py setup_schedules` and the tasks
# the engine hands to the cluster itself. sync.cluster refuses any other (and any result hook)
# where a task is enqueued and again where a worker takes it; a Schedule naming another is refused
# when it is saved. settings.EXTRA_TASKS adds tests' own.
TASKS = frozenset(f"sync.tasks.{name}" for name in (
    "capture_changes", "drain_queue", "compact_vectors", "purge_tombstones", "purge_finished_events", "upkeep",
    "search_canary", "reconcile_incremental", "reconcile_full", "run_reconciliation", "resync_labels"))


def kick_drain(*, debounce: bool = True) -> bool:
    """Ask the cluster for a drain now (unless one was asked for in the last second here)."""
    if not settings.SYNC_KICK_DRAIN or (debounce and not cache.add(KICK_KEY, 1, timeout=1)):
        return False
    from django_q.tasks import async_task

    async_task("sync.tasks.drain_queue", RUN_SECONDS, group="sync-drain", q_options={"timeout": RUN_SECONDS + 60})
    return True


def resume() -> dict:
    """What a cluster started again after one of its processes died (sync.cluster) asks for at
    once instead of at the next minute's schedule: change capture, whose run was stopped with the
    rest (when the schedules run it), and a drain."""
    from django_q.models import Schedule
    from django_q.tasks import async_task

    capture = Schedule.objects.filter(func="sync.tasks.capture_changes").exists()
    if capture:
        async_task("sync.tasks.capture_changes", group="sync-capture")
    return {"capture": capture, "drain": kick_drain(debounce=False)}


def on_work_enqueued(sender, **kwargs) -> None:
    """Receiver of `sync.queue.work_enqueued`: a drain starts soon after work is stored."""
    try:
        kick_drain()
    except Exception:  # noqa: BLE001 — the work is stored; the next scheduled drain applies it
        log.exception("could not kick a drain after an enqueue; the scheduled drains will apply the work")


def stoppable(task: Callable[..., dict]) -> Callable[..., dict]:
    """A task that a SIGTERM stops promptly (see `sync.shutdown`; the cluster's processes handle
    it): not started once the process is stopping, and ended with a result, not a traceback,
    when the signal interrupts a batch (which has gone back to the queue by then)."""

    @functools.wraps(task)
    def run(*args, **kwargs) -> dict:
        if shutdown.requested():
            return {"skipped": "this worker is stopping (SIGTERM)"}
        try:
            return task(*args, **kwargs)
        except shutdown.StopRequested:
            log.warning("%s stopped by SIGTERM", task.__name__)
            return {"stopped": "SIGTERM: the work in flight went back to the queue"}

    return run


def drain_slots() -> list[str]:
    return [f"drain:{n}" for n in range(settings.SYNC_DRAIN_WORKERS)]


@stoppable
def drain_queue(seconds: float = RUN_SECONDS) -> dict:
    """Apply ready events in one of the drain slots; return once the queue has been idle for a
    flush interval, or after `seconds`."""
    name = queue.worker_name()
    slot = WorkerLease.take(drain_slots(), name, DRAIN_LEASE_SECONDS)
    if slot is None:
        return {"skipped": f"all {settings.SYNC_DRAIN_WORKERS} drain slots are taken"}
    finished, lost = threading.Event(), threading.Event()

    def keep_slot() -> None:
        """Renew the slot while the drain runs, however long one batch takes."""
        try:
            while not finished.wait(DRAIN_RENEW_SECONDS):
                try:
                    if not WorkerLease.renew(slot, name, DRAIN_LEASE_SECONDS):
                        log.warning("drain %s lost its slot %s (its lease expired): stopping", name, slot)
                        lost.set()
                        return
                except DatabaseError as exc:  # the lease outlives a few failed renewals
                    log.warning("drain %s could not renew its slot %s: %s", name, slot, exc)
        finally:
            connections.close_all()  # this thread's own connection

    keeper = threading.Thread(target=keep_slot, name=f"{slot}-lease", daemon=True)
    keeper.start()
    try:
        counts = worker.drain(max_seconds=seconds, idle_exit=settings.SYNC_FLUSH_INTERVAL + 1, flush=True,
                              stop=lambda: lost.is_set() or shutdown.requested())
    finally:
        finished.set()
        keeper.join()
        WorkerLease.release(slot, name)
    successor = not shutdown.requested() and bool(worker.ready_work(1).count) and kick_drain(debounce=False)
    return {**asdict(counts), "slot": slot, "successor": successor}


@stoppable
def capture_changes(seconds: float = RUN_SECONDS, stop=lambda: False) -> dict:
    """Poll Neo4j for changes every CAPTURE_INTERVAL seconds; apply HIGH priority work at once."""
    name = queue.worker_name()
    ready_for_urgent_work()
    urgent = ApplyCounts()

    def after_poll(result: capture.CaptureResult) -> None:
        # What capture enqueued has kicked a drain already (sync.queue.work_enqueued).
        urgent.add(worker.apply_urgent(name))

    stopping = lambda: stop() or shutdown.requested()  # noqa: E731
    # The observer (samples, alert checks, notifications) runs beside capture: see sync.observe.observer.
    with observer.beside(name, stop=stopping):
        result = capture.run(name, seconds=seconds, after_poll=after_poll, stop=stopping)
    return {**asdict(result), "urgent": asdict(urgent)}


def ready_for_urgent_work() -> None:
    """Load the embedding model and open the vector store before polling. The poller applies HIGH priority work itself, and in a cold process its first KEV waited
    for the weights: 8-10 s beside a busy drain worker (bench/lag.py, where it made HIGH lag p95
    10.7-13.9 s in the runs whose warm-up writes the drain worker happened to apply). Scheduled
    capture runs overlap, so the run before this one keeps polling meanwhile; in a process that
    is warm already this is one short encode. Neither failing stops capture: the applies retry,
    and changes must be queued whatever the model or the store does. On Kafka the consumers
    apply the HIGH work (each warms up before it joins the group): nothing to do here."""
    if settings.SYNC_TRANSPORT == "kafka":
        return
    started = time.monotonic()
    try:
        embedding.warm_up()
        vector_store().ping()
    except Exception as exc:  # noqa: BLE001 — capture goes on; HIGH work is retried like any other
        log.warning("change capture starts without a warm model or vector store: %s", exc)
        return
    log.info("change capture: embedding model and vector store ready in %.1f s", time.monotonic() - started)


def compact_vectors() -> dict:
    store = vector_store()
    compact = getattr(store, "compact", None)
    if compact is None:
        return {"compacted": False, "reason": f"{type(store).__name__} needs no compaction"}
    return {"compacted": True, "result": str(compact())}


def purge_tombstones() -> int:
    return capture.purge_tombstones()


def purge_finished_events(days: int = 7) -> int:
    return queue.purge_finished(timedelta(days=days))


@stoppable
def run_reconciliation(run_id: int) -> dict:
    """A run queued by `sync.reconcile.reconciler.start` (the dashboard, the API)."""
    run = reconcile.execute(ReconcileRun.objects.get(pk=run_id))
    return {"run": run.pk, "status": run.status, "drift": run.drift, "repaired": run.repaired,
            "in_flight": run.in_flight}


@stoppable
def reconcile_incremental() -> dict:
    run = reconcile.incremental(trigger=ReconcileRun.Trigger.SCHEDULE)
    return {"run": run.pk, "drift": run.drift, "repaired": run.repaired,
            "in_flight": run.in_flight}


def upkeep() -> dict:
    """End what a killed process left open: sagas still `started`, reconciliations still `running`
    (or queued but never started), backfills whose producer stopped handing work over; and report
    an observer that has stopped beating."""
    return {"sagas_ended": writes.fail_abandoned_sagas(), "reconciliations_failed": reconcile.fail_abandoned(),
            "backfills_ended": backfill.end_abandoned(), "observer": observer.report_if_stopped()}


@stoppable
def reconcile_full() -> dict:
    run = reconcile.full(trigger=ReconcileRun.Trigger.SCHEDULE)
    return {"run": run.pk, "drift": run.drift, "repaired": run.repaired,
            "in_flight": run.in_flight}


def resync_labels(labels: list[str], priority: int, audit_id: int, backfill_id: int | None = None) -> dict:
    """A label or full resync too large for a web request (sync.resync.start), audited when it
    was asked for (`audit_id`), as the backfill recorded then (`backfill_id`)."""
    entry = AuditEntry.objects.get(pk=audit_id)
    return enqueue_labels(labels, actor=entry.actor or entry.actor_name, priority=priority, entry=entry,
                          backfill_id=backfill_id)


def search_canary() -> dict:
    """Search for a few recently synced HIGH entities by their own text (sync.search.canary)."""
    checks = canary.run()
    return {"checked": len(checks), "found": sum(c.found for c in checks),
            "missed": sum(not c.found and not c.error for c in checks), "errors": sum(bool(c.error) for c in checks)}
