"""Metric samples for the charts: one every SAMPLE_INTERVAL (15 s), rolled up into five-minute
samples and those into hourly ones, the table kept bounded by retention (raw: SAMPLE_RAW_HOURS,
rollups: SAMPLE_ROLLUP_DAYS): about 5,760 + 8,640 + 720 rows at the defaults.

A sample covers the interval since the previous one and ends at a multiple of the interval
(epoch-aligned), so two observers racing at a hand-over write it once (a unique constraint).

Rollup math, and why no library: a rollup's counts are sums, its queue depth a mean, its
point-in-time gauges the last raw value and its oldest-unsynced age a maximum — a few lines —
while its lag percentiles are not computed from the raw samples' percentiles (percentiles do not
combine) but again, exactly, from the events acked in that bucket, which are still in the table
(finished events are kept seven days). numpy does the percentile math.

Charts draw at most MAX_POINTS points a trace: a longer range is downsampled on the way out
(`downsample`), where a point's lag is the highest p95 (and max) of the samples it covers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from sync.models import SyncEvent
from sync.observe import readings as readings_
from sync.observe.counters import counter_totals
from sync.observe.models import MetricSample

log = logging.getLogger(__name__)

RAW = MetricSample.Resolution.RAW
ROLLUP = MetricSample.Resolution.FIVE_MINUTES
HOURLY = MetricSample.Resolution.HOUR
ROLLUP_SECONDS = 300
TIERS = ((ROLLUP, 300, RAW), (HOURLY, 3600, ROLLUP))  # (resolution, bucket seconds, made from)
MAX_GAP = timedelta(hours=1)  # a sample after a longer silence starts afresh (the cluster was down)
BUCKETS_PER_TICK = 288  # catch up at most this many buckets a tier per call
MAX_POINTS = 400

# Chart ranges: how far back, and which samples draw it (240, 1,440, 288, 168 and 720 samples).
RANGES = {
    "1h": (timedelta(hours=1), RAW),
    "6h": (timedelta(hours=6), RAW),
    "24h": (timedelta(hours=24), ROLLUP),
    "7d": (timedelta(days=7), HOURLY),
    "30d": (timedelta(days=30), HOURLY),
}
DEFAULT_RANGE = "1h"


def aligned(now: datetime, seconds: float) -> datetime:
    epoch = now.timestamp()
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def record(now: datetime | None = None, *, reading: readings_.Readings | None = None,
           totals: dict | None = None) -> MetricSample | None:
    """The raw sample ending at the interval boundary just passed; None if it exists already."""
    at = aligned(now or timezone.now(), settings.SAMPLE_INTERVAL)
    if MetricSample.objects.filter(resolution=RAW, at=at).exists():
        return None
    previous = MetricSample.objects.filter(resolution=RAW, at__lt=at).order_by("-at").first()
    fresh = previous is None or at - previous.at > MAX_GAP
    since = at - timedelta(seconds=settings.SAMPLE_INTERVAL) if fresh else previous.at
    reading = reading or readings_.read(at)
    totals = totals if totals is not None else counter_totals()
    before = {} if fresh else previous.data.get("totals", {})
    data = {
        "lag": {p: s.as_dict() for p, s in readings_.lag_by_priority(since, at).items()},
        "lag_window": {p: s.as_dict() for p, s in reading.lag.items()},
        "depth": reading.depth,
        "dead_letters": reading.dead_letters,
        "oldest_unsynced": reading.oldest_unsynced,
        **_throughput(since, at),
        "errors": _increase(before.get("errors", {}), totals["errors"], fresh),
        "embedded": _increase({"n": before.get("embedded", 0)}, {"n": totals["embedded"]}, fresh).get("n", 0),
        "open_conflicts": reading.open_conflicts,
        "drift": reading.drift,
        "reconcile": _run_summary(reading.reconcile.last_finished),
        "freshness": {p: f.state for p, f in reading.freshness.items()},
        "totals": totals,
    }
    try:
        with transaction.atomic():
            return MetricSample.objects.create(resolution=RAW, at=at, seconds=(at - since).total_seconds(),
                                               data=data)
    except IntegrityError:
        return None  # another observer wrote this interval's sample first


def _increase(before: dict, after: dict, fresh: bool) -> dict:
    """Counter increases since the previous sample; a counter that went down was reset (its
    files were wiped at a restart), so all of its value is new."""
    if fresh:
        return {}
    grown = {}
    for key, value in after.items():
        old = before.get(key, 0)
        grown[key] = value - old if value >= old else value
    return {k: v for k, v in grown.items() if v}


def _throughput(since: datetime, until: datetime) -> dict:
    statuses = [s for s, _ in SyncEvent.Status.choices]  # spelled out so the (status, created_at) index serves
    events_in = SyncEvent.objects.filter(status__in=statuses, created_at__gt=since, created_at__lte=until).count()
    out = SyncEvent.objects.filter(status__in=[SyncEvent.Status.DONE, SyncEvent.Status.DEAD],
                                   finished_at__gt=since, finished_at__lte=until)
    done = dead = 0
    for status in out.values_list("status", flat=True).iterator(chunk_size=5000):
        if status == SyncEvent.Status.DEAD:
            dead += 1
        else:
            done += 1
    return {"events_in": events_in, "events_out": done, "dead_new": dead}


def _run_summary(run) -> dict | None:
    if run is None:
        return None
    return {"id": run.pk, "mode": run.mode, "status": run.status, "dry_run": run.dry_run,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None}


def rollup(now: datetime | None = None) -> int:
    """Write the five-minute and hourly samples of every closed bucket not rolled up yet. Returns how many."""
    now = now or timezone.now()
    return sum(_roll(resolution, seconds, source, now) for resolution, seconds, source in TIERS)


def _bucket_end(at: datetime, seconds: int) -> datetime:
    """The end of the bucket an interval ending at `at` belongs to: buckets are (start, end]."""
    return aligned(at - timedelta(microseconds=1), seconds) + timedelta(seconds=seconds)


def _roll(resolution: str, seconds: int, source: str, now: datetime) -> int:
    end = aligned(now, seconds)
    last = MetricSample.objects.filter(resolution=resolution).order_by("-at").values_list("at", flat=True).first()
    first = MetricSample.objects.filter(resolution=source).order_by("at").values_list("at", flat=True).first()
    if first is None:
        return 0
    start = last if last else _bucket_end(first, seconds) - timedelta(seconds=seconds)
    start = max(start, end - timedelta(seconds=seconds * BUCKETS_PER_TICK))
    buckets: dict[datetime, list[MetricSample]] = {}
    for sample in MetricSample.objects.filter(resolution=source, at__gt=start, at__lte=end).order_by("at"):
        buckets.setdefault(_bucket_end(sample.at, seconds), []).append(sample)
    written = 0
    for bucket_end, members in buckets.items():
        bucket_start = bucket_end - timedelta(seconds=seconds)
        data = combine(members, lag={p: s.as_dict() for p, s in readings_.lag_by_priority(bucket_start, bucket_end).items()})
        try:
            with transaction.atomic():
                MetricSample.objects.create(resolution=resolution, at=bucket_end, seconds=sum(m.seconds for m in members),
                                            data=data)
            written += 1
        except IntegrityError:
            continue
    return written


def combine(members: list[MetricSample], lag: dict | None = None) -> dict:
    """One sample from consecutive ones (oldest first). `lag`: the exact lag of the combined
    interval, computed from its events; without it (downsampling for a chart) each priority's
    p95 and max are the highest of the members' and its p50 their median."""
    last = members[-1].data
    n = len(members)
    depth = {p: {s: round(sum(m.data["depth"][p][s] for m in members) / n, 2) for s in ("queued", "in_flight")}
             for p in readings_.PRIORITIES}
    oldest = {}
    for p in readings_.PRIORITIES:
        ages = [m.data["oldest_unsynced"].get(p) for m in members if m.data["oldest_unsynced"].get(p) is not None]
        oldest[p] = max(ages) if ages else None
    errors: dict[str, float] = {}
    for m in members:
        for kind, count in m.data["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    breached = {p: "breached" if any(m.data["freshness"][p] == "breached" for m in members) else "met"
                for p in readings_.PRIORITIES}
    return {
        "lag": lag if lag is not None else _combined_lag(members),
        "depth": depth,
        "dead_letters": last["dead_letters"],
        "oldest_unsynced": oldest,
        "events_in": sum(m.data["events_in"] for m in members),
        "events_out": sum(m.data["events_out"] for m in members),
        "dead_new": sum(m.data["dead_new"] for m in members),
        "errors": errors,
        "embedded": sum(m.data["embedded"] for m in members),
        "open_conflicts": last["open_conflicts"],
        "drift": last["drift"],
        "reconcile": last["reconcile"],
        "freshness": breached,
        "samples": sum(m.data.get("samples", 1) for m in members),
    }


def _combined_lag(members: list[MetricSample]) -> dict:
    combined = {}
    for p in (*readings_.PRIORITIES, "all"):
        stats = [m.data["lag"].get(p, {}) for m in members]
        known = [s for s in stats if s.get("n")]
        if not known:
            combined[p] = {"n": 0, "p50": None, "p95": None, "max": None}
            continue
        p50s = sorted(s["p50"] for s in known)
        combined[p] = {"n": sum(s["n"] for s in known), "p50": p50s[len(p50s) // 2],
                       "p95": max(s["p95"] for s in known), "max": max(s["max"] for s in known)}
    return combined


def downsample(shown: list[MetricSample], max_points: int = MAX_POINTS) -> list[MetricSample]:
    """At most `max_points` samples for a chart, each combining consecutive ones (never across a gap
    of more than two steps, so a pause still shows as one)."""
    if len(shown) <= max_points:
        return shown
    size = -(-len(shown) // max_points)
    step = shown[0].seconds or 1
    out, group = [], []
    for sample in shown:
        if group and (len(group) == size or (sample.at - group[-1].at).total_seconds() > 2 * step):
            out.append(_merged(group))
            group = []
        group.append(sample)
    out.append(_merged(group))
    return out


def _merged(group: list[MetricSample]) -> MetricSample:
    if len(group) == 1:
        return group[0]
    return MetricSample(resolution=group[-1].resolution, at=group[-1].at, seconds=sum(m.seconds for m in group),
                        data=combine(group))


def prune(now: datetime | None = None) -> int:
    """Drop raw samples past SAMPLE_RAW_HOURS (rolled up long before) and rollups past SAMPLE_ROLLUP_DAYS."""
    now = now or timezone.now()
    raw, _ = MetricSample.objects.filter(
        resolution=RAW, at__lt=now - timedelta(hours=settings.SAMPLE_RAW_HOURS)).delete()
    rolled, _ = MetricSample.objects.filter(
        resolution__in=[ROLLUP, HOURLY], at__lt=now - timedelta(days=settings.SAMPLE_ROLLUP_DAYS)).delete()
    return raw + rolled


@dataclass(frozen=True)
class Window:
    key: str
    since: datetime
    until: datetime
    resolution: str


def window(key: str, now: datetime | None = None) -> Window:
    """A chart range by its query-string key (an unknown key is the default range)."""
    key = key if key in RANGES else DEFAULT_RANGE
    span, resolution = RANGES[key]
    until = now or timezone.now()
    return Window(key, until - span, until, resolution)


def in_window(w: Window) -> list[MetricSample]:
    """The samples that draw a range, oldest first (one query)."""
    return list(MetricSample.objects.filter(resolution=w.resolution, at__gt=w.since, at__lte=w.until)
                .order_by("at").only("resolution", "at", "seconds", "data"))


def latest() -> MetricSample | None:
    return MetricSample.objects.filter(resolution=RAW).order_by("-at").first()


def embed_rate(now=None) -> float | None:
    """Chunks embedded per second in the busiest five minutes of the last day (None: none)."""
    now = now or timezone.now()
    best = None
    rows = MetricSample.objects.filter(resolution=ROLLUP, at__gt=now - timedelta(days=1))
    for seconds, data in rows.values_list("seconds", "data"):
        embedded = data.get("embedded") if isinstance(data, dict) else None
        if seconds and embedded:
            best = max(best or 0.0, float(embedded) / seconds)
    return best
