"""Prometheus metrics of the sync engine (served at /metrics).

The work happens in django-q2 worker processes and management commands, not in the web process
that is scraped. Two kinds of numbers, each from where it is true:

- Counters and the lag histogram are counted where the work happens, in prometheus-client's
  multiprocess mode: every process writes its values to memory-mapped files in
  PROMETHEUS_MULTIPROC_DIR (set by settings before this module is imported) and a scrape sums
  the files of all processes, the dead ones' included — counts of work done cannot be re-read
  from the database (errors leave no row) and a histogram keeps its buckets.
- Gauges (queue depth, dead letters, oldest unsynced change, freshness, heartbeats, open
  alerts, ...) are read from the database at scrape time (`sync.observe.readings`), so any
  process reports the same truth; services are pinged.

The directory must be emptied when the application starts (bin/run does), as the library
requires: a stale file of a previous run would add its counts to the new run's. Each process
leaves its files behind when it exits (django-q2 recycles workers), so the observer folds the
files of exited processes into one archive per type every five minutes (`fold_dead_processes`).
All processes writing here must share one PID namespace (one machine, or containers with a
shared `pid:`); with workers on other machines, scrape each machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and values.ValueClass.__name__ == "MutexValue":
    raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: its counters "
                       "would stay in this process; import Django settings first")

LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 14400, 86400)

SYNC_LAG = Histogram(
    "sync_lag_seconds", "Time from a change committed in Neo4j to its vector being written",
    ["priority"], buckets=LAG_BUCKETS,
)
SYNC_ERRORS = Counter("sync_errors_total", "Failed sync attempts", ["kind"])
EVENTS_APPLIED = Counter("sync_events_applied_total", "Sync events finished by a worker", ["outcome"])
EMBEDDED_CHUNKS = Counter("sync_embedded_chunks_total", "Texts embedded by the model")
CONSISTENCY_VIOLATIONS = Counter(
    "consistency_violations_total", "Drift found by reconciliation", ["kind"],
)
SAGAS = Counter("sync_sagas_total", "Dual-write sagas by outcome", ["outcome"])


def multiprocess_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(settings.PROMETHEUS_MULTIPROC_DIR))
    return registry


@contextlib.contextmanager
def _files_locked(*, shared: bool):
    """Scrapes (shared) never read the directory while dead processes' files are folded (exclusive)."""
    with open(settings.PROMETHEUS_MULTIPROC_DIR / ".fold.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fold_dead_processes() -> int:
    """Fold the counter and histogram files of processes that have exited into one archive file
    per type, so the directory (and a scrape's work) stays bounded however often django-q2
    recycles its workers. Values are per-process increments, so folding is a sum; the library's
    own file format (MmapedDict) is used to write the archive. Returns the files folded."""
    directory = settings.PROMETHEUS_MULTIPROC_DIR
    folded = 0
    with _files_locked(shared=False):
        dead: dict[str, list[str]] = {}
        for path in directory.glob("*.db"):
            kind, _, pid = path.stem.partition("_")
            if kind in ("counter", "histogram") and pid.isdigit() and not _alive(int(pid)):
                dead.setdefault(kind, []).append(str(path))
        for kind, paths in dead.items():
            totals: dict[str, float] = {}
            for path in paths:
                for key, value, _, _ in MmapedDict.read_all_values_from_file(path):
                    totals[key] = totals.get(key, 0.0) + value
            archive = MmapedDict(str(directory / f"{kind}_archive.db"))
            try:
                for key, value in totals.items():
                    before, _ = archive.read_value(key)
                    archive.write_value(key, before + value, time.time())
            finally:
                archive.close()
            for path in paths:
                os.unlink(path)
            folded += len(paths)
    return folded


def counter_totals() -> dict:
    """The counters samples take differences of, summed over every process: errors by kind,
    embedded chunks, events applied by outcome."""
    totals = {"errors": {}, "embedded": 0.0, "applied": {}}
    with _files_locked(shared=True):
        families = list(multiprocess_registry().collect())
    for family in families:
        for sample in family.samples:
            if sample.name == "sync_errors_total":
                totals["errors"][sample.labels["kind"]] = sample.value
            elif sample.name == "sync_embedded_chunks_total":
                totals["embedded"] = sample.value
            elif sample.name == "sync_events_applied_total":
                totals["applied"][sample.labels["outcome"]] = sample.value
    return totals


class ReadingsCollector(Collector):
    """Gauges read from the database (and the services pinged) at scrape time."""

    def collect(self):
        from sync.observe import health, readings
        from sync.observe.models import Alert

        try:
            now = readings.read()
            services = health.check_services()
            open_alerts = list(Alert.objects.filter(status=Alert.Status.OPEN).values_list("rule", "severity"))
        except Exception:  # noqa: BLE001 — the counters must still be scraped when the database is busy
            log.exception("could not read the sync state for /metrics")
            SYNC_ERRORS.labels("metrics").inc()
            yield gauge("sync_metrics_readings_ok", "1 when the database answered this scrape", value=0)
            return
        yield gauge("sync_metrics_readings_ok", "1 when the database answered this scrape", value=1)
        yield gauge("sync_queue_depth", "Queued and in-flight sync events", ["priority"],
                    {(p,): now.depth_of(p) for p in readings.PRIORITIES})
        yield gauge("sync_queue_events", "Sync events waiting, by priority and status", ["priority", "status"],
                    {(p, s): n for p, by_status in now.depth.items() for s, n in by_status.items()})
        yield gauge("sync_dead_letters", "Sync events out of attempts (the dead-letter queue)", value=now.dead_letters)
        yield gauge("sync_oldest_unsynced_age_seconds", "Age of the oldest change still waiting for its vector",
                    ["priority"], {(p,): age for p, age in now.oldest_unsynced.items() if age is not None})
        freshness = now.freshness
        yield gauge("sync_freshness_target_seconds", "How soon a change must reach search", ["priority"],
                    {(p,): f.target for p, f in freshness.items()})
        yield gauge("sync_freshness_breached", "1 while the freshness target is missed", ["priority"],
                    {(p,): int(f.breached) for p, f in freshness.items()})
        yield gauge("sync_window_lag_seconds", "Lag of the changes synced in the freshness window",
                    ["priority", "quantile"],
                    {(p, q): getattr(stats, f"p{q}") for p, stats in now.lag.items()
                     for q in ("50", "95") if getattr(stats, f"p{q}") is not None})
        yield gauge("sync_open_conflicts", "Conflicts waiting for an analyst", value=now.open_conflicts)
        yield from _reconcile_gauges(now)
        yield gauge("sync_compensation_failures_unreconciled",
                    "Dual-write sagas whose undo failed, not yet checked by a successful reconciliation",
                    value=now.unreconciled_compensation_failures)
        yield gauge("sync_heartbeat_age_seconds", "Seconds since the observer loop and change capture last beat",
                    ["worker"], {(name,): age for name, age in now.heartbeats.items() if age is not None})
        yield gauge("sync_schedules_late", "django-q2 schedules overdue by more than SCHEDULE_GRACE",
                    value=len(now.late_schedules))
        yield gauge("sync_service_up", "1 when the service answers a ping", ["service"],
                    {(s.name,): int(s.ok) for s in services})
        yield from _canary_gauges(now.at)
        counts: dict[tuple[str, str], int] = {}
        for rule, severity in open_alerts:
            counts[(rule, severity)] = counts.get((rule, severity), 0) + 1
        yield gauge("sync_alerts_open", "Open alerts of the in-app rules", ["rule", "severity"], counts)


def _canary_gauges(at):
    from sync import canary

    checks = [c for c in canary.latest_round(at) if not c.error]
    if checks:
        yield gauge("sync_search_canary_misses", "Entities the newest search-canary round did not find in the top k",
                    value=sum(not c.found for c in checks))


def _reconcile_gauges(now):
    state = now.reconcile
    if state.last_started_at:
        yield gauge("sync_reconciliation_last_start_timestamp_seconds",
                    "When the newest repairing reconciliation started", value=state.last_started_at.timestamp())
    run = state.last_finished
    if run is not None:
        yield gauge("sync_reconciliation_last_failed", "1 when the newest finished reconciliation failed",
                    value=int(run.status == run.Status.FAILED))
        yield gauge("sync_reconciliation_drift", "Drift found by the newest finished reconciliation", ["kind"],
                    {(kind,): n for kind, n in run.drift.items()})


def gauge(name: str, documentation: str, labels=(), points: dict | None = None, *, value=None):
    family = GaugeMetricFamily(name, documentation, labels=list(labels) if labels else None,
                               value=value if not labels else None)
    for label_values, number in (points or {}).items():
        family.add_metric(list(label_values), number)
    return family


def exposition() -> bytes:
    with _files_locked(shared=True):
        counted = generate_latest(multiprocess_registry())
    gauges = CollectorRegistry()
    gauges.register(ReadingsCollector())
    return counted + generate_latest(gauges)
