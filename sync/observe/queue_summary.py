"""The queue as an operator sees it: depth and age per priority, batches in flight, throughput,
and the backfills whose work waits behind the streaming changes.

A handful of aggregate queries whatever the queue's size (each on an index of sync_event); with
SYNC_TRANSPORT=kafka also one reading of the consumer group's lag per topic and partition (the
depth, `sync.queue.lanes`), and the batches in flight are the consumers'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max
from django.utils import timezone

from sync import backfill, queue
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
    transport: str = "outbox"  # SYNC_TRANSPORT
    backfills: list[backfill.Progress] = field(default_factory=list)  # running, and lately finished

    @property
    def depth(self) -> int:
        """Streaming events queued or in flight."""
        return sum(lane.depth for lane in self.lanes)

    @property
    def backfill_depth(self) -> int:
        """Backfills' events queued or in flight (behind the streaming ones)."""
        return sum(lane.backfill for lane in self.lanes)

    @property
    def partitions(self) -> list:
        """SYNC_TRANSPORT=kafka: the consumer group's lag per topic and partition, HIGH first, the
        backfill topic's last."""
        return [p for lane in self.lanes for p in lane.partitions] + \
            [p for lane in self.lanes for p in lane.backfill_partitions]

    @property
    def lag_error(self) -> str:
        """SYNC_TRANSPORT=kafka: why the broker's lag is unknown ("" when it answered)."""
        return next((lane.lag_error for lane in self.lanes if lane.lag_error), "")


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
    return QueueSummary(now, list(lanes.values()), batches, dead, applied, arrived, settings.SYNC_TRANSPORT,
                        backfills=backfill.current(now))
