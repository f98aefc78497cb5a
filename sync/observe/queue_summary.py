"""The queue as an operator sees it: depth and age per priority, batches in flight, throughput.

A handful of aggregate queries whatever the queue's size (each on an index of sync_event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Max
from django.utils import timezone

from sync import queue
from sync.models import SyncEvent

Status = SyncEvent.Status
WINDOWS = {"5 min": timedelta(minutes=5), "1 h": timedelta(hours=1)}


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
    lanes: list[queue.Lane]  # HIGH first
    batches: list[Batch]
    dead_letters: int
    applied: dict[str, int] = field(default_factory=dict)  # window -> events finished
    arrived: dict[str, int] = field(default_factory=dict)  # window -> events created

    @property
    def depth(self) -> int:
        return sum(lane.depth for lane in self.lanes)


def summary(now: datetime | None = None, max_batches: int = 50) -> QueueSummary:
    now = now or timezone.now()
    lanes = queue.lanes(now)
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
