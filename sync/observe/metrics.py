"""Prometheus exposition of the sync engine (served at /metrics).

The work happens in django-q2 worker processes and management commands, not in the web process
that is scraped. Two kinds of numbers, each from where it is true:

- Counters and the lag histogram are counted where the work happens (sync.observe.counters,
  prometheus-client's multiprocess mode); a scrape sums the files of all processes.
- Gauges (queue depth, dead letters, oldest unsynced change, freshness, heartbeats, open
  alerts, ...) are read from the database at scrape time (`sync.observe.readings`), so any
  process reports the same truth; services are pinged.

Every family is exposed from the first scrape, each series of a known label value too: at zero
(no alert open for a rule, no change waiting, no drift of a kind found), NaN for a lag quantile
with no change synced in the window (as Prometheus' own summaries do). Only what has never
happened has no sample — the start of a reconciliation, a heartbeat, a search-canary round —
whose absence a rule may test (`absent(sync_heartbeat_age_seconds{worker="observer"})`).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sync.observe import health, readings
from sync.observe.alerting import RULES
from sync.observe.counters import DRIFT_KINDS, SYNC_ERRORS, files_locked, multiprocess_registry
from sync.observe.models import Alert

log = logging.getLogger(__name__)


class ReadingsCollector(Collector):
    """Gauges read from the database (and the services pinged) at scrape time."""

    def collect(self):
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
        yield gauge("sync_queue_depth", "Queued and in-flight streaming sync events (a backfill's: sync_backfill_entities)",
                    ["priority"], {(p,): now.depth_of(p) for p in readings.PRIORITIES})
        yield gauge("sync_queue_events", "Streaming sync events waiting, by priority and status", ["priority", "status"],
                    {(p, s): n for p, by_status in now.depth.items() for s, n in by_status.items()})
        yield gauge("sync_dead_letters", "Sync events out of attempts (the dead-letter queue)", value=now.dead_letters)
        yield gauge("sync_oldest_unsynced_age_seconds", "Age of the oldest change still waiting for its vector",
                    ["priority"], {(p,): age or 0.0 for p, age in now.oldest_unsynced.items()})
        freshness = now.freshness
        yield gauge("sync_freshness_target_seconds", "How soon a change must reach search", ["priority"],
                    {(p,): f.target for p, f in freshness.items()})
        yield gauge("sync_freshness_breached", "1 while the freshness target is missed", ["priority"],
                    {(p,): int(f.breached) for p, f in freshness.items()})
        yield gauge("sync_window_lag_seconds", "Lag of the changes synced in the freshness window",
                    ["priority", "quantile"],
                    {(p, q): _or_nan(getattr(stats, f"p{q}")) for p, stats in now.lag.items() for q in ("50", "95")})
        yield from _backfill_gauges(now)
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
        counts: dict[tuple[str, str], int] = {(rule.key, str(rule.severity)): 0 for rule in RULES}
        for rule, severity in open_alerts:
            counts[(rule, severity)] = counts.get((rule, severity), 0) + 1
        yield gauge("sync_alerts_open", "Open alerts of the in-app rules", ["rule", "severity"], counts)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _backfill_gauges(now):
    running = [p for p in now.backfills if not p.finished]
    yield gauge("sync_backfill_entities", "Entities of the running backfills (bulk loads), by state",
                ["backfill", "kind", "state"],
                {(str(p.backfill.pk), p.backfill.kind, state): getattr(p, state)
                 for p in running for state in ("total", "done", "waiting", "failed")})
    yield gauge("sync_backfill_idle_seconds", "Seconds since a running backfill last finished an entity",
                ["backfill", "kind"], {(str(p.backfill.pk), p.backfill.kind): p.idle for p in running})
    yield gauge("sync_backfill_window_lag_seconds", "Lag of the backfills' entities synced in the freshness window",
                ["quantile"], {(q,): _or_nan(getattr(now.backfill_lag, f"p{q}")) for q in ("50", "95")})


def _canary_gauges(at):
    checks = [c for c in readings.canary_latest_round(at) if not c.error]
    # No sample until a round has searched (the family is there, empty).
    yield gauge("sync_search_canary_misses", "Entities the newest search-canary round did not find in the top k",
                [], {(): sum(not c.found for c in checks)} if checks else {})


def _reconcile_gauges(now):
    state = now.reconcile
    started = state.last_started_at
    yield gauge("sync_reconciliation_last_start_timestamp_seconds", "When the newest repairing reconciliation started",
                [], {(): started.timestamp()} if started else {})
    run = state.last_finished
    failed = run is not None and run.status == run.Status.FAILED
    yield gauge("sync_reconciliation_last_failed", "1 when the newest finished reconciliation failed", value=int(failed))
    found = run.drift if run is not None else {}
    yield gauge("sync_reconciliation_drift", "Drift found by the newest finished reconciliation", ["kind"],
                {(kind,): found.get(kind, 0) for kind in (*DRIFT_KINDS, *sorted(set(found) - set(DRIFT_KINDS)))})


def gauge(name: str, documentation: str, labels=(), points: dict | None = None, *, value=None):
    """A gauge family: one `value`, or `points` by label values (`labels=[]` with points keyed by
    `()`: an unlabelled gauge that may have no sample)."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels) if labels or points is not None else None,
                               value=value if not labels and points is None else None)
    for label_values, number in (points or {}).items():
        family.add_metric(list(label_values), number)
    return family


def exposition() -> bytes:
    with files_locked(shared=True):
        counted = generate_latest(multiprocess_registry())
    gauges = CollectorRegistry()
    gauges.register(ReadingsCollector())
    return counted + generate_latest(gauges)
