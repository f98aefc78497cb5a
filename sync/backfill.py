"""Backfills: bulk loads tracked as a phase of their own, apart from the streaming changes — as a
CDC tool's snapshot is apart from its stream.

What starts one: the first start's demo load (the "initial sync", `manage.py load_demo`), a
whole-catalogue feed import (`import_kev` of BACKFILL_MIN_ENTITIES entries or more), a label or
full resync, a reconciliation whose repairs pass BACKFILL_MIN_ENTITIES. Its work is ordinary sync
events marked with it (`SyncEvent.backfill`), and so:

- the queue claims streaming changes first and a backfill's work with what is left of a batch
  (besides the aged share every event has); the HIGH-only claims never take it (sync.queue);
- a streaming change to an entity whose backfill work still waits takes the event out of the
  backfill, timed from that change;
- queue depth, lag percentiles, freshness and their alerts are of streaming events only
  (sync.observe.readings); a backfill has its own progress, rate, ETA and lag beside them, and
  the `backfill_stalled` alert when it stops moving.

Progress is read from its events, never counted by the workers: an entity is done once it was
handed over (`Backfill.enqueued`, counted by the queue in the enqueue's transaction) and none of
the backfill's events for it waits or is dead — applied, or taken over by a streaming change.
Until the producer has handed everything over (`loaded_at`), what it has not handed over yet is
still to do; after, every entity it covers that waits for nothing is done (a feed import's
unchanged entries need no work). A backfill finishes when it is loaded and nothing of it waits.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, F, Max, Q
from django.utils import timezone

from sync import queue
from sync.models import Backfill, SyncEvent, SyncRecord
from sync.stores import graph_store

log = logging.getLogger(__name__)

Kind = Backfill.Kind
Status = SyncEvent.Status
PAGE = 1000  # entities read from the graph and enqueued at a time
RATE_WINDOW = timedelta(minutes=5)  # the rate, and so the ETA, is of the entities finished this recently
SHOWN_AFTER = timedelta(minutes=30)  # a finished backfill stays on the pages this long
MAX_SHOWN = 10


def start(kind: str, *, scope: str = "", reason: str = "", actor=None, total: int = 0) -> Backfill:
    """Record a backfill about to hand `total` entities (an estimate) to the queue."""
    name = actor.get_username() if getattr(actor, "pk", None) else str(actor or "system")
    return Backfill.objects.create(kind=kind, scope=scope[:200], reason=reason, actor_name=name[:150],
                                   total=max(int(total), 0))


def loaded(backfill: Backfill, *, total: int | None = None) -> Backfill:
    """Every entity is handed over: from now on the backfill finishes when none of its work waits.
    `total`: the entities it covers after all (default: the estimate, or what was handed over
    when that is more)."""
    backfill.refresh_from_db(fields=["enqueued"])
    backfill.total = max(backfill.total if total is None else total, backfill.enqueued)
    backfill.loaded_at = timezone.now()
    backfill.save(update_fields=["total", "loaded_at"])
    return backfill


@contextlib.contextmanager
def tracking(backfill: Backfill):
    """Work stored in the body (enqueued, or claimed by a dual-write) belongs to `backfill`, which
    is loaded when the body ends. A body that fails hands over nothing more: the backfill then
    covers what it did hand over, so that it still finishes."""
    try:
        with queue.backfill_scope(backfill.pk):
            yield backfill
    except BaseException:
        loaded(backfill, total=0)  # what it did hand over
        raise
    loaded(backfill)


def first_kind() -> str:
    """A load into an index nothing was ever synced to is the initial sync; a later one a bulk load."""
    return Kind.LOAD if SyncRecord.objects.exists() or Backfill.objects.exists() else Kind.INITIAL_SYNC


def enqueue_labels(backfill: Backfill, labels: list[str], *, priority: int | None = None,
                   source: str = "backfill") -> dict[str, int]:
    """Hand every entity of these labels to `backfill` (each label paged in uid order, one graph
    read a page), in the label's policy lane unless `priority` says otherwise; loaded at the end.
    Returns the entities enqueued per label.

    No change time travels with the work: a reload is not a change, and the data's age must not
    count as lag (apply times a new version from the graph's own `updated_at`)."""
    graph = graph_store()
    counts: dict[str, int] = {}
    with tracking(backfill):
        for label in labels:
            lane = queue.priority_of(label) if priority is None else priority
            after, total = None, 0
            while page := graph.scan_label(label, after, PAGE):
                queue.enqueue_many([queue.Work(label=e.label, uid=e.uid, version=e.version, priority=lane,
                                               source=source) for e in page])
                total += len(page)
                after = page[-1].uid
            counts[label] = total
    return counts


@dataclass(frozen=True)
class Progress:
    """How far one backfill has come, read at `at`."""

    backfill: Backfill
    at: datetime
    waiting: int  # its events queued or in flight
    failed: int  # its dead letters
    finished_lately: int  # its events applied or dead within RATE_WINDOW
    last_progress_at: datetime | None  # when the newest of its events finished

    @property
    def title(self) -> str:
        return self.backfill.get_kind_display()

    @property
    def scope_words(self) -> str:
        return self.backfill.scope or "entities"

    @property
    def loading(self) -> bool:
        """The producer is still handing entities over."""
        return self.backfill.loaded_at is None

    @property
    def total(self) -> int:
        return max(self.backfill.total, self.backfill.enqueued)

    @property
    def done(self) -> int:
        handed = self.backfill.enqueued if self.loading else self.total
        return min(max(handed - self.waiting - self.failed, 0), self.total)

    @property
    def remaining(self) -> int:
        return max(self.total - self.done - self.failed, 0)

    @property
    def finished(self) -> bool:
        return not self.loading and self.waiting == 0

    @property
    def rate(self) -> float | None:
        """Entities a second over the last RATE_WINDOW (or since it started, when later); None
        while none has finished in it."""
        span = min(RATE_WINDOW.total_seconds(), (self.at - self.backfill.started_at).total_seconds())
        return self.finished_lately / span if self.finished_lately and span > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds until it is done at the current rate (None: no rate to tell by)."""
        if self.finished:
            return 0.0
        rate = self.rate
        return math.ceil(self.remaining / rate) if rate else None

    @property
    def idle(self) -> float:
        """Seconds since it last moved: its newest event finished, else it started."""
        moved = max(t for t in (self.last_progress_at, self.backfill.started_at) if t is not None)
        return max((self.at - moved).total_seconds(), 0.0)

    @property
    def stalled(self) -> bool:
        """Work remains and nothing of it has finished for BACKFILL_STALL_MINUTES."""
        return not self.finished and self.idle > settings.BACKFILL_STALL_MINUTES * 60


def progress_of(backfill: Backfill, now: datetime | None = None) -> Progress:
    """One aggregate over the backfill's own events (the sync_event_backfill index).

    SYNC_TRANSPORT=kafka: work waiting in the topics is no row yet (a consumer makes its event when
    it claims it), so what was handed over and no event of the backfill names yet also waits. Every
    entity handed over gets one: applied, dead, or `superseded` when a streaming change took it
    over (`queue.claim_works`)."""
    now = now or timezone.now()
    rows = (SyncEvent.objects.filter(backfill=backfill).values("status")
            .annotate(n=Count("id"), lately=Count("id", filter=Q(finished_at__gt=now - RATE_WINDOW)),
                      last=Max("finished_at")).order_by())
    by_status = {row["status"]: row for row in rows}
    finished = [by_status[s] for s in (Status.DONE, Status.DEAD) if s in by_status]
    lasts = [row["last"] for row in finished if row["last"] is not None]
    waiting = sum(by_status[s]["n"] for s in (Status.QUEUED, Status.IN_FLIGHT) if s in by_status)
    if settings.SYNC_TRANSPORT == "kafka":
        named = SyncEvent.objects.filter(backfill=backfill).values("label", "uid").distinct().count()
        waiting += max(backfill.enqueued - named, 0)
    return Progress(
        backfill, now,
        waiting=waiting,
        failed=by_status[Status.DEAD]["n"] if Status.DEAD in by_status else 0,
        finished_lately=sum(row["lately"] for row in finished),
        last_progress_at=max(lasts) if lasts else None,
    )


def current(now: datetime | None = None) -> list[Progress]:
    """The running backfills, and those finished within SHOWN_AFTER, newest first."""
    now = now or timezone.now()
    shown = (Backfill.objects.filter(Q(finished_at__isnull=True) | Q(finished_at__gt=now - SHOWN_AFTER))
             .order_by("-started_at")[:MAX_SHOWN])
    return [progress_of(backfill, now) for backfill in shown]


def settle(now: datetime | None = None) -> int:
    """Mark finished the loaded backfills none of whose work waits any more (the observer does,
    every check); returns how many."""
    now = now or timezone.now()
    settled = 0
    for backfill in Backfill.objects.filter(finished_at__isnull=True, loaded_at__isnull=False):
        shown = progress_of(backfill, now)
        if shown.finished:
            at = max(t for t in (shown.last_progress_at, backfill.loaded_at) if t is not None)
            settled += Backfill.objects.filter(pk=backfill.pk, finished_at__isnull=True).update(finished_at=at)
    return settled


def end_abandoned(now: datetime | None = None) -> int:
    """Mark loaded the backfills whose producer stopped handing work over without saying so (a
    process killed mid-load: `tracking` never ran its end). Such a backfill would wait for ever,
    stalled; after BACKFILL_STALL_MINUTES with nothing handed over (its newest event, else its
    start) it covers what was handed over, and finishes once that is done. The upkeep task calls
    this. Returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(minutes=settings.BACKFILL_STALL_MINUTES)
    ended = 0
    for backfill in Backfill.objects.filter(loaded_at__isnull=True, started_at__lt=cutoff):
        newest = SyncEvent.objects.filter(backfill=backfill).aggregate(at=Max("created_at"))["at"]
        if newest is not None and newest >= cutoff:
            continue
        loaded(backfill, total=0)
        log.warning("backfill %s (%s) has handed nothing over for %.0f minutes: its producer stopped; it "
                    "covers the %d entities handed over", backfill.pk, backfill.get_kind_display(),
                    settings.BACKFILL_STALL_MINUTES, backfill.enqueued)
        ended += 1
    return ended


def adopt(backfill: Backfill, events) -> int:
    """Make queued streaming events (of `events`, a SyncEvent queryset) the backfill's: a
    reconciliation's first repairs, once their number shows they are a bulk load. Returns how many."""
    taken = events.filter(status=Status.QUEUED, backfill__isnull=True).update(backfill=backfill)
    if taken:
        Backfill.objects.filter(pk=backfill.pk).update(enqueued=F("enqueued") + taken)
    return taken


@contextlib.contextmanager
def if_bulk(count: int, kind: str, **fields):
    """A backfill around the body (`start(kind, **fields)`, `tracking`) when `count` — the entries
    of a feed, say — reaches BACKFILL_MIN_ENTITIES; below it the body's work stays streaming
    (a day's 20–50 KEV entries must reach search within the HIGH target, and be measured so)."""
    if count < settings.BACKFILL_MIN_ENTITIES:
        yield None
        return
    with tracking(start(kind, **fields)) as load:
        yield load
