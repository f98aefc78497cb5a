"""The queue as an operator sees it: depth and age per priority, batches in flight, throughput.

A handful of aggregate queries whatever the queue's size (each on an index of sync_event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from sync.models import Priority, SyncEvent

Status = SyncEvent.Status
WINDOWS = {"5 min": timedelta(minutes=5), "1 h": timedelta(hours=1)}


@dataclass
class Lane:
    priority: str
    queued: int = 0
    backing_off: int = 0  # queued but waiting for their retry time after a failure
    in_flight: int = 0
    oldest_created: datetime | None = None
    oldest_change: datetime | None = None  # the earliest unsynced graph change waiting

    @property
    def depth(self) -> int:
        return self.queued + self.in_flight


@dataclass
class Batch:
    worker: str
    events: int
    lease_expires_at: datetime | None
    attempts: int  # the highest attempt number in the batch

    @property
    def lease_lost(self) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at < timezone.now()


@dataclass
class QueueSummary:
    at: datetime
    lanes: list[Lane]
    batches: list[Batch]
    dead_letters: int
    applied: dict[str, int] = field(default_factory=dict)  # window -> events finished
    arrived: dict[str, int] = field(default_factory=dict)  # window -> events created

    @property
    def depth(self) -> int:
        return sum(lane.depth for lane in self.lanes)


def summary(now: datetime | None = None, max_batches: int = 50) -> QueueSummary:
    now = now or timezone.now()
    lanes = {p.value: Lane(p.label) for p in Priority}
    rows = (SyncEvent.objects.filter(status__in=[Status.QUEUED, Status.IN_FLIGHT])
            .values("priority", "status")
            .annotate(n=Count("id"), later=Count("id", filter=Q(next_attempt_at__gt=now)),
                      created=Min("created_at"), changed=Min("changed_at")).order_by())
    for row in rows:
        lane = lanes[row["priority"]]
        if row["status"] == Status.QUEUED:
            lane.queued, lane.backing_off = row["n"], row["later"]
        else:
            lane.in_flight = row["n"]
        lane.oldest_created = _min(lane.oldest_created, row["created"])
        lane.oldest_change = _min(lane.oldest_change, row["changed"])
    batches = [
        Batch(worker=row["claim_token"].rsplit(":", 1)[0] or "?", events=row["n"],
              lease_expires_at=row["lease"], attempts=row["attempts"] or 0)
        for row in (SyncEvent.objects.filter(status=Status.IN_FLIGHT).values("claim_token")
                    .annotate(n=Count("id"), lease=Max("lease_expires_at"), attempts=Max("attempts"))
                    .order_by("lease")[:max_batches])
    ]
    # Separate counts, each on an index: one aggregate with filters would scan every event.
    dead = SyncEvent.objects.filter(status=Status.DEAD).count()
    applied = {name: SyncEvent.objects.filter(status=Status.DONE, finished_at__gte=now - span).count()
               for name, span in WINDOWS.items()}
    arrived = {name: SyncEvent.objects.filter(status__in=list(Status.values), created_at__gte=now - span).count()
               for name, span in WINDOWS.items()}
    return QueueSummary(now, list(lanes.values()), batches, dead, applied, arrived)


def _min(a, b):
    return b if a is None or (b is not None and b < a) else a
