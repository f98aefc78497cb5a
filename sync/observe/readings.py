"""One reading of everything observation watches, taken from the database (and, when asked, the
stores): what samples record, what alert rules judge, what /metrics, the overview and
`manage.py sync_status` show.

Queue depth, lag percentiles and freshness are of streaming changes: a backfill's events (a bulk
load, sync.backfill) wait behind those by design, and would otherwise read as a breach for as
long as the load takes. Backfills are read beside them — each one's progress, and the lag of
their entities (`backfill_lag`).

Every number here comes from the database at the time of reading, so every process — web,
django-q2 workers, commands — reports the same truth. The engine's one `percentiles` lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from sync import backfill, queue
from sync.models import ChangeCursor, Conflict, Priority, ReconcileRun, SagaLog, SyncEvent, SyncRecord
from sync.observe.models import CanaryCheck, Heartbeat

PRIORITIES = tuple(Priority.labels)  # "high", "medium", "low": the order of every chart
OBSERVER = "observer"
CAPTURE = "capture"
FINISHED_RUNS = (ReconcileRun.Status.SUCCEEDED, ReconcileRun.Status.FAILED)
STATUS_LAG_WINDOW = timedelta(hours=1)  # the lag `sync_status` prints


def percentiles(values: Sequence[float], *fractions: float) -> list[float | None]:
    """The values' percentile at each fraction (0.95: p95), interpolated linearly between the two
    nearest ranks (numpy's default); None for each when there are no values."""
    if not len(values):
        return [None] * len(fractions)
    return [float(v) for v in np.percentile(values, [100 * f for f in fractions])]


@dataclass(frozen=True)
class LagStats:
    """Change-to-vector lag of the events finished in a window, seconds."""

    n: int = 0
    p50: float | None = None
    p95: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values) -> LagStats:
        if not len(values):
            return cls()
        p50, p95 = percentiles(values, 0.50, 0.95)
        return cls(len(values), round(p50, 3), round(p95, 3), round(float(max(values)), 3))

    def as_dict(self) -> dict:
        return {"n": self.n, "p50": self.p50, "p95": self.p95, "max": self.max}


@dataclass(frozen=True)
class Freshness:
    """Is search fresh for one priority? The promise: a change reaches search within `target`."""

    priority: str
    target: float
    lag_p95: float | None  # over the freshness window
    oldest_unsynced: float | None  # age of the oldest change still waiting

    @property
    def worst(self) -> float | None:
        known = [v for v in (self.lag_p95, self.oldest_unsynced) if v is not None]
        return max(known) if known else None

    @property
    def breached(self) -> bool:
        return self.worst is not None and self.worst > self.target

    @property
    def state(self) -> str:
        return "breached" if self.breached else "met"


@dataclass(frozen=True)
class ReconcileState:
    last_finished: ReconcileRun | None  # the newest finished run, dry runs included
    last_started_at: datetime | None  # the newest run that repairs (not a dry run), whatever its state
    last_succeeded_started_at: datetime | None
    scheduled_next: datetime | None  # the incremental schedule's next run, when there is one


@dataclass
class Readings:
    at: datetime
    depth: dict[str, dict[str, int]]  # priority -> {"queued": n, "in_flight": n}
    dead_letters: int
    oldest_unsynced: dict[str, float | None]  # priority -> seconds since its oldest waiting change
    lag: dict[str, LagStats]  # priority (and "all") -> over the trailing FRESHNESS_WINDOW
    open_conflicts: int
    reconcile: ReconcileState
    unreconciled_compensation_failures: int  # failed saga undos no successful reconciliation has checked since
    heartbeats: dict[str, float | None]  # name -> seconds since it beat (None: never)
    late_schedules: list[tuple[str, float]] = field(default_factory=list)  # (name, seconds overdue)
    schedules: int = 0
    backfills: list[backfill.Progress] = field(default_factory=list)  # running, and lately finished
    backfill_lag: LagStats = LagStats()  # of the backfills' entities synced in the FRESHNESS_WINDOW

    @property
    def queue_depth(self) -> int:
        return sum(sum(by_status.values()) for by_status in self.depth.values())

    def depth_of(self, priority: str) -> int:
        return sum(self.depth[priority].values())

    @property
    def freshness(self) -> dict[str, Freshness]:
        return {p: Freshness(p, settings.FRESHNESS_TARGETS[p], self.lag[p].p95, self.oldest_unsynced[p])
                for p in PRIORITIES}

    @property
    def drift(self) -> dict[str, int]:
        run = self.reconcile.last_finished
        return dict(run.drift) if run else {}


def read(now: datetime | None = None, *, observer_alive: bool = False) -> Readings:
    """`observer_alive`: the observer itself is reading (its own heartbeat is now, whatever the row says)."""
    now = now or timezone.now()
    lanes = queue.lanes(now)
    depth = {p: {"queued": lane.queued, "in_flight": lane.in_flight} for p, lane in lanes.items()}
    oldest = {p: None if lane.oldest_change is None else max((now - lane.oldest_change).total_seconds(), 0.0)
              for p, lane in lanes.items()}
    since = now - timedelta(seconds=settings.FRESHNESS_WINDOW)
    return Readings(
        at=now, depth=depth, dead_letters=SyncEvent.objects.filter(status=SyncEvent.Status.DEAD).count(),
        oldest_unsynced=oldest,
        lag=lag_by_priority(since, now),
        backfills=backfill.current(now), backfill_lag=backfill_lag(since, now),
        open_conflicts=Conflict.objects.filter(status=Conflict.Status.OPEN).count(),
        reconcile=_reconcile_state(),
        unreconciled_compensation_failures=_unreconciled_compensation_failures(),
        heartbeats=heartbeats(now, observer_alive),
        **schedules(now),
    )


def _acked(since: datetime, until: datetime):
    return SyncEvent.objects.filter(status=SyncEvent.Status.DONE, finished_at__gt=since, finished_at__lte=until,
                                    lag_seconds__isnull=False)


def lag_by_priority(since: datetime, until: datetime) -> dict[str, LagStats]:
    """Lag of the streaming events acked in (since, until], by priority and "all" (no-op work has
    no lag; a backfill's events are `backfill_lag`'s)."""
    values: dict[str, list[float]] = {p: [] for p in PRIORITIES}
    rows = _acked(since, until).filter(backfill__isnull=True).values_list("priority", "lag_seconds")
    for priority, lag in rows.iterator(chunk_size=5000):
        values[Priority(priority).label].append(lag)
    stats = {p: LagStats.of(v) for p, v in values.items()}
    stats["all"] = LagStats.of([lag for v in values.values() for lag in v])
    return stats


def backfill_lag(since: datetime, until: datetime) -> LagStats:
    """Lag of the backfills' events acked in (since, until]: from the graph version they brought to
    its vector, so for a load, how long after it the entity became searchable."""
    return LagStats.of(list(_acked(since, until).filter(backfill__isnull=False).values_list("lag_seconds", flat=True)))


@dataclass(frozen=True)
class Snapshot:
    """A reading, and what only an operator asks for (`manage.py sync_status`): the last hour's lag
    and the totals by status of sync records and sagas (each a scan of its table, so never part
    of the observer's reading)."""

    reading: Readings
    lag: LagStats  # of the events applied in the last STATUS_LAG_WINDOW, all priorities
    records: dict[str, int]
    sagas: dict[str, int]
    cursor: ChangeCursor | None

    @property
    def oldest_unsynced(self) -> float | None:
        """Seconds since the oldest change still waiting, whatever its priority."""
        ages = [age for age in self.reading.oldest_unsynced.values() if age is not None]
        return max(ages) if ages else None


def snapshot(now: datetime | None = None) -> Snapshot:
    reading = read(now)
    return Snapshot(
        reading, lag_by_priority(reading.at - STATUS_LAG_WINDOW, reading.at)["all"],
        records=_by_status(SyncRecord), sagas=_by_status(SagaLog),
        cursor=ChangeCursor.objects.filter(name="neo4j").first())


def _by_status(model) -> dict[str, int]:
    return dict(model.objects.values_list("status").annotate(n=Count("id")).order_by())


def _reconcile_state() -> ReconcileState:
    from django_q.models import Schedule

    finished = ReconcileRun.objects.filter(status__in=FINISHED_RUNS).order_by("-started_at").first()
    repairing = ReconcileRun.objects.filter(dry_run=False).order_by("-started_at")
    started = repairing.values_list("started_at", flat=True).first()
    succeeded = repairing.filter(status=ReconcileRun.Status.SUCCEEDED).values_list("started_at", flat=True).first()
    scheduled = (Schedule.objects.filter(func="sync.tasks.reconcile_incremental")
                 .values_list("next_run", flat=True).first())
    return ReconcileState(finished, started, succeeded, scheduled)


def _unreconciled_compensation_failures() -> int:
    """A saga whose undo failed left the graph and the vector store apart; a reconciliation that
    started after it and succeeded has checked (and repaired) that entity."""
    failures = SagaLog.objects.filter(status=SagaLog.Status.COMPENSATION_FAILED)
    checked = (ReconcileRun.objects.filter(status=ReconcileRun.Status.SUCCEEDED, dry_run=False)
               .order_by("-started_at").values_list("started_at", flat=True).first())
    if checked:
        failures = failures.filter(started_at__gte=checked)
    return failures.count()


def heartbeats(now: datetime, observer_alive: bool = False) -> dict[str, float | None]:
    ages: dict[str, float | None] = {OBSERVER: None, CAPTURE: None}
    for name, at in Heartbeat.objects.filter(name=OBSERVER).values_list("name", "at"):
        ages[name] = max((now - at).total_seconds(), 0.0)
    if observer_alive:
        ages[OBSERVER] = 0.0
    polled = ChangeCursor.objects.filter(name="neo4j").values_list("polled_at", flat=True).first()
    if polled:
        ages[CAPTURE] = max((now - polled).total_seconds(), 0.0)
    return ages


def schedules(now: datetime) -> dict:
    from django_q.models import Schedule

    late = []
    rows = list(Schedule.objects.exclude(repeats=0).values_list("name", "func", "next_run"))
    for name, func, next_run in rows:
        overdue = (now - next_run).total_seconds() if next_run else None
        if overdue is not None and overdue > settings.SCHEDULE_GRACE:
            late.append((name or func, overdue))
    return {"late_schedules": late, "schedules": len(rows)}


# --- the search canary's rounds (run by sync.search.canary) ---
def canary_latest_round(now=None) -> list[CanaryCheck]:
    """The search canary's newest round's checks, if it ran within two schedule intervals (else: none to judge)."""
    now = now or timezone.now()
    newest = CanaryCheck.objects.order_by("-at").first()
    if newest is None or now - newest.at > timedelta(minutes=2 * settings.SEARCH_CANARY_MINUTES):
        return []
    return list(CanaryCheck.objects.filter(at=newest.at))


def canary_recent_rounds(limit: int = 15) -> list[CanaryCheck]:
    return list(CanaryCheck.objects.order_by("-at", "label", "uid")[:limit])


def canary_misses_between(since, until) -> list[CanaryCheck]:
    """Probes that searched and did not find their entity (not those a store stopped)."""
    return list(CanaryCheck.objects.filter(at__gt=since, at__lte=until, found=False, error="")
                .order_by("-at")[:50])
