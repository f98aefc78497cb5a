"""A snapshot of sync health, shared by `sync_status`, the dashboard and alerting."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count
from django.utils import timezone

from sync import queue
from sync.models import ChangeCursor, SagaLog, SyncEvent, SyncRecord


@dataclass
class SyncStatus:
    at: datetime
    depth: dict[str, int]
    dead_letters: int
    oldest_pending_age: float | None  # seconds since the oldest unsynced change
    lag_p50: float | None  # recent change-to-vector lag, seconds
    lag_p95: float | None
    lag_samples: int
    records: dict[str, int] = field(default_factory=dict)
    cursor: ChangeCursor | None = None
    sagas: dict[str, int] = field(default_factory=dict)

    @property
    def queue_depth(self) -> int:
        return sum(self.depth.values())


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def recent_lags(window: timedelta = timedelta(hours=1), limit: int = 5000) -> list[float]:
    """Change-to-vector lags (Neo4j's clock) of the events applied in the window, newest first.
    Work that brought no graph change to the index (a no-op resync) has none."""
    since = timezone.now() - window
    return list(SyncEvent.objects.filter(status=SyncEvent.Status.DONE, finished_at__gte=since,
                                         lag_seconds__isnull=False)
                .order_by("-finished_at").values_list("lag_seconds", flat=True)[:limit])


def snapshot() -> SyncStatus:
    now = timezone.now()
    oldest = queue.oldest_pending_change()
    lags = recent_lags()
    return SyncStatus(
        at=now,
        depth=queue.depth_by_priority(),
        dead_letters=SyncEvent.objects.filter(status=SyncEvent.Status.DEAD).count(),
        oldest_pending_age=(now - oldest).total_seconds() if oldest else None,
        lag_p50=percentile(lags, 0.50),
        lag_p95=percentile(lags, 0.95),
        lag_samples=len(lags),
        records={row["status"]: row["n"] for row in
                 SyncRecord.objects.values("status").annotate(n=Count("id"))},
        cursor=ChangeCursor.objects.filter(name="neo4j").first(),
        sagas={row["status"]: row["n"] for row in SagaLog.objects.values("status").annotate(n=Count("id"))},
    )
