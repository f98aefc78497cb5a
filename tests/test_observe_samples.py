"""Metric samples: what one records, rollups, retention, and the observer that writes them."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from sync.models import Conflict, Priority, ReconcileRun, SyncEvent
from sync.observe import observer, readings, samples
from sync.observe.models import Heartbeat, MetricSample
from tests.observe_helpers import finished, waiting

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
NO_COUNTERS = {"errors": {}, "embedded": 0, "applied": {}}


def test_a_sample_records_lag_by_priority_queue_depth_and_throughput(settings):
    now = samples.aligned(timezone.now(), settings.SAMPLE_INTERVAL)  # the end of the interval sampled
    for lag in (1.0, 2.0, 3.0, 4.0, 30.0):
        finished(lag, priority=Priority.HIGH, at=now - timedelta(seconds=2))
    finished(None, at=now - timedelta(seconds=2), outcome="unchanged")  # no-op work has no lag
    waiting(priority=Priority.LOW, age=90, now=now)
    waiting(priority=Priority.LOW, status=SyncEvent.Status.IN_FLIGHT, age=10, now=now)
    waiting(priority=Priority.MEDIUM, status=SyncEvent.Status.DEAD, now=now - timedelta(seconds=1))
    Conflict.objects.create(kind="threat_severity", label="ThreatActor", uid="apt1")

    sample = samples.record(now, totals=NO_COUNTERS)

    assert sample.resolution == "raw" and sample.at == now
    data = sample.data
    assert data["lag"]["high"]["n"] == 5 and data["lag"]["high"]["p50"] == 3.0 and data["lag"]["high"]["max"] == 30.0
    assert data["lag"]["medium"] == {"n": 0, "p50": None, "p95": None, "max": None}
    assert data["depth"]["low"] == {"queued": 1, "in_flight": 1} and data["depth"]["high"] == {"queued": 0, "in_flight": 0}
    assert data["dead_letters"] == 1
    assert data["oldest_unsynced"]["low"] == 90
    assert data["events_out"] == 6 and data["dead_new"] == 1
    assert data["open_conflicts"] == 1
    assert data["freshness"] == {"high": "met", "medium": "met", "low": "met"}


def test_one_sample_per_interval_and_each_covers_the_time_since_the_previous(settings):
    settings.SAMPLE_INTERVAL = 15
    first = samples.record(T0, totals=NO_COUNTERS)
    assert samples.record(T0 + timedelta(seconds=7), totals=NO_COUNTERS) is None  # same interval: written once
    second = samples.record(T0 + timedelta(seconds=31), totals=NO_COUNTERS)  # 10:00:15 was missed: 30 s covered
    assert first.seconds == 15 and second.at == T0 + timedelta(seconds=30) and second.seconds == 30


def test_counters_become_increases_and_a_reset_counts_from_zero(settings):
    settings.SAMPLE_INTERVAL = 15
    samples.record(T0, totals={"errors": {"store": 5}, "embedded": 100, "applied": {}})
    grown = samples.record(T0 + timedelta(seconds=15), totals={"errors": {"store": 7, "capture": 1}, "embedded": 160,
                                                               "applied": {}})
    assert grown.data["errors"] == {"store": 2, "capture": 1} and grown.data["embedded"] == 60
    reset = samples.record(T0 + timedelta(seconds=30), totals={"errors": {"store": 3}, "embedded": 10, "applied": {}})
    assert reset.data["errors"] == {"store": 3} and reset.data["embedded"] == 10


def test_a_sample_after_a_long_silence_starts_afresh(settings):
    settings.SAMPLE_INTERVAL = 15
    samples.record(T0, totals={"errors": {"store": 5}, "embedded": 100, "applied": {}})
    later = samples.record(T0 + timedelta(hours=3), totals={"errors": {"store": 50}, "embedded": 900, "applied": {}})
    assert later.seconds == 15 and later.data["errors"] == {} and later.data["embedded"] == 0


def test_a_rollup_sums_counts_averages_depth_and_recomputes_lag_from_the_events(settings):
    settings.SAMPLE_INTERVAL = 15
    for n in range(20):  # 10:00:15 … 10:05:00, the bucket ending 10:05
        at = T0 + timedelta(seconds=15 * (n + 1))
        finished(float(n + 1), priority=Priority.HIGH, at=at - timedelta(seconds=1))
        MetricSample.objects.create(resolution="raw", at=at, seconds=15, data=_raw(queued=n, events_in=2, errors=1))
    MetricSample.objects.create(resolution="raw", at=T0 + timedelta(minutes=5, seconds=15), seconds=15,
                                data=_raw(queued=99, events_in=5, errors=0))  # the next bucket, still open

    assert samples.rollup(T0 + timedelta(minutes=5, seconds=20)) == 1
    rolled = MetricSample.objects.get(resolution="5m")
    assert rolled.at == T0 + timedelta(minutes=5) and rolled.seconds == 300
    assert rolled.data["events_in"] == 40 and rolled.data["errors"] == {"store": 20}
    assert rolled.data["depth"]["medium"]["queued"] == pytest.approx(9.5)
    # Exact percentiles of the twenty lags (1..20 s), not an average of the raw samples' percentiles.
    assert rolled.data["lag"]["high"]["n"] == 20 and rolled.data["lag"]["high"]["max"] == 20.0
    assert rolled.data["lag"]["high"]["p50"] == pytest.approx(10.5)
    assert samples.rollup(T0 + timedelta(minutes=5, seconds=40)) == 0  # idempotent
    assert samples.rollup(T0 + timedelta(minutes=10)) == 1  # the next bucket once it closes


def test_retention_keeps_the_table_bounded(settings):
    settings.SAMPLE_RAW_HOURS, settings.SAMPLE_ROLLUP_DAYS = 24, 30
    now = T0
    for hours in (1, 23, 25, 48):
        MetricSample.objects.create(resolution="raw", at=now - timedelta(hours=hours), seconds=15, data=_raw())
    for days in (1, 29, 31):
        MetricSample.objects.create(resolution="5m", at=now - timedelta(days=days), seconds=300, data=_raw())
    assert samples.prune(now) == 3
    assert sorted((now - s.at) for s in MetricSample.objects.filter(resolution="raw")) == [
        timedelta(hours=1), timedelta(hours=23)]
    assert MetricSample.objects.filter(resolution="5m").count() == 2


def test_a_chart_range_reads_raw_samples_for_hours_and_rollups_for_days():
    assert samples.window("1h", T0).resolution == "raw" and samples.window("6h", T0).resolution == "raw"
    assert samples.window("24h", T0).resolution == "5m" and samples.window("7d", T0).resolution == "1h"
    assert samples.window("<script>", T0).key == "1h"


def test_freshness_is_breached_by_slow_syncs_or_by_a_change_still_waiting(settings):
    settings.FRESHNESS_TARGETS = {"high": 60.0, "medium": 900.0, "low": 86400.0}
    finished(5.0, priority=Priority.HIGH)
    assert readings.read().freshness["high"].state == "met"
    waiting(priority=Priority.HIGH, age=120)  # a KEV waiting two minutes: search is not fresh
    fresh = readings.read().freshness["high"]
    assert fresh.breached and fresh.oldest_unsynced == pytest.approx(120, abs=3)
    finished(500.0, priority=Priority.MEDIUM)
    assert readings.read().freshness["medium"].state == "met"
    finished(1000.0, priority=Priority.MEDIUM)
    finished(1000.0, priority=Priority.MEDIUM)
    assert readings.read().freshness["medium"].breached  # p95 of 500, 1000, 1000 s


def test_the_drift_of_the_last_reconciliation_is_in_the_sample():
    ReconcileRun.objects.create(mode="incremental", status="succeeded", drift={"missing_vector": 3},
                                started_at=timezone.now() - timedelta(minutes=2), finished_at=timezone.now())
    sample = samples.record(totals=NO_COUNTERS)
    assert sample.data["drift"] == {"missing_vector": 3}
    assert sample.data["reconcile"]["mode"] == "incremental"


def test_an_observer_tick_samples_judges_and_beats(neo4j_driver, vectors, settings):
    settings.SAMPLE_INTERVAL = 15
    result = observer.tick("test-observer")
    assert result.sampled and not result.errors
    assert MetricSample.objects.filter(resolution="raw").count() == 1
    beat = Heartbeat.objects.get(name="observer")
    assert beat.owner == "test-observer"


def test_the_observer_loop_holds_a_lease_and_ticks_at_each_boundary(neo4j_driver, vectors, settings):
    settings.SAMPLE_INTERVAL = 1
    ticks = observer.run("loop-test", seconds=2.6)
    assert ticks >= 1
    assert MetricSample.objects.filter(resolution="raw").count() == ticks
    from sync.models import WorkerLease

    assert WorkerLease.objects.get(name="observer").owner == ""  # handed back


def _raw(queued=0, events_in=0, errors=0):
    return {
        "lag": {p: {"n": 0, "p50": None, "p95": None, "max": None} for p in ("high", "medium", "low", "all")},
        "depth": {p: {"queued": queued if p == "medium" else 0, "in_flight": 0} for p in ("high", "medium", "low")},
        "dead_letters": 0, "oldest_unsynced": {"high": None, "medium": 4.0, "low": None},
        "events_in": events_in, "events_out": 0, "dead_new": 0,
        "errors": {"store": errors} if errors else {}, "embedded": 0, "open_conflicts": 0, "drift": {},
        "reconcile": None, "freshness": {"high": "met", "medium": "met", "low": "met"},
    }


@pytest.mark.django_db(transaction=True)
def test_samples_keep_flowing_beside_change_capture(synced_graph, vectors, settings):
    """What the django-q2 cluster runs: the observer thread lives as long as the capture run."""
    from sync import tasks

    settings.OBSERVE_BESIDE_CAPTURE, settings.SAMPLE_INTERVAL = True, 1
    tasks.capture_changes(seconds=2.5)
    assert MetricSample.objects.filter(resolution="raw").exists()
    assert Heartbeat.objects.get(name="observer").owner.endswith(":observer")
    from sync.models import WorkerLease

    assert WorkerLease.objects.get(name="observer").owner == ""  # handed over when capture ended


def test_hourly_rollups_are_made_from_the_five_minute_ones(settings):
    for n in range(12):  # the hour ending 11:00
        at = T0 + timedelta(minutes=5 * (n + 1))
        finished(float(n + 1), priority=Priority.LOW, at=at - timedelta(seconds=1))
        MetricSample.objects.create(resolution="5m", at=at, seconds=300, data=_raw(queued=n, events_in=10, errors=1))
    MetricSample.objects.create(resolution="raw", at=T0 + timedelta(minutes=60), seconds=15, data=_raw())
    samples.rollup(T0 + timedelta(minutes=61))
    hour = MetricSample.objects.get(resolution="1h")
    assert hour.at == T0 + timedelta(hours=1) and hour.seconds == 3600
    assert hour.data["events_in"] == 120 and hour.data["errors"] == {"store": 12}
    assert hour.data["lag"]["low"]["n"] == 12 and hour.data["lag"]["low"]["max"] == 12.0  # from the events


def test_a_long_range_is_downsampled_for_the_chart_and_a_pause_still_shows():
    shown = [MetricSample(resolution="raw", at=T0 + timedelta(seconds=15 * n), seconds=15, data=_raw(events_in=1))
             for n in range(1000)]
    shown += [MetricSample(resolution="raw", at=T0 + timedelta(hours=5, seconds=15 * n), seconds=15,
                           data=_raw(events_in=1)) for n in range(440)]  # after a pause of almost an hour
    points = samples.downsample(shown, max_points=400)
    assert len(points) <= 401
    assert sum(p.data["events_in"] for p in points) == 1440  # counts are kept
    assert any((b.at - a.at) > timedelta(minutes=30) for a, b in zip(points, points[1:], strict=False))
    assert samples.downsample(shown[:300], max_points=400) == shown[:300]
