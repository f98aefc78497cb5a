"""What the overview page shows, without HTML: KPI cards, services, chart markers.

A bounded number of queries whatever the data size: one reading (sync.observe.readings), the raw
samples of the freshness window, one rollup about an hour old to compare with, the observer's
heartbeat (its last service pings) and, for the charts, the samples of the range and at most
MAX_MARKERS of each kind of marker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from sync.models import AuditEntry, ReconcileRun
from sync.observe import health, readings, samples, units
from sync.observe.models import Heartbeat, MetricSample
from sync.observe.units import duration, per_minute, rate, split_duration

MAX_MARKERS = 60
OK, WARNING, CRITICAL, INFO, CONFLICT = "ok", "warning", "critical", "info", "conflict"


@dataclass(frozen=True)
class Card:
    key: str
    title: str
    value: str
    unit: str
    state: str  # ok | warning | critical | info | conflict: colour, icon and word on the page
    state_word: str
    comparison: str
    detail: str = ""
    link: str | None = None
    link_text: str = ""


@dataclass(frozen=True)
class Marker:
    at: datetime
    kind: str  # "reconciliation" | "resync"
    text: str


def _url(name: str, query: str = "") -> str | None:
    """A link to another page, once that page exists."""
    try:
        return reverse(name) + query
    except NoReverseMatch:
        return None


def _delta(now: float | None, then: float | None, unit: str = "") -> str:
    if then is None or now is None:
        return "no sample from 1 h ago"
    change = now - then
    if abs(change) < 1e-9:
        return "same as 1 h ago"
    shown = f"{abs(change):.0f}" if abs(change) >= 10 or float(change).is_integer() else f"{abs(change):.1f}"
    return f"{'+' if change > 0 else '−'}{shown}{unit} vs 1 h ago"


def hour_ago(now: datetime) -> MetricSample | None:
    return (MetricSample.objects.filter(resolution=samples.ROLLUP, at__lte=now - timedelta(hours=1),
                                        at__gt=now - timedelta(hours=1, minutes=10))
            .order_by("-at").first())


def recent(now: datetime) -> list[MetricSample]:
    return list(MetricSample.objects.filter(resolution=samples.RAW,
                                            at__gt=now - timedelta(seconds=settings.FRESHNESS_WINDOW),
                                            at__lte=now).order_by("at"))


def _sums(rows: list[MetricSample]) -> dict[str, float]:
    total = {"seconds": 0.0, "errors": 0.0, "out": 0.0, "in": 0.0, "embedded": 0.0}
    for row in rows:
        total["seconds"] += row.seconds
        total["errors"] += sum(row.data.get("errors", {}).values()) + row.data.get("dead_new", 0)
        total["out"] += row.data.get("events_out", 0)
        total["in"] += row.data.get("events_in", 0)
        total["embedded"] += row.data.get("embedded", 0)
    return total


def cards(reading: readings.Readings) -> list[Card]:
    now = reading.at
    then = hour_ago(now)
    window = _sums(recent(now))
    before = _sums([then]) if then else None
    found = [_freshness_card(reading.freshness[p], reading.lag[p]) for p in readings.PRIORITIES]
    found += [_oldest_card(reading, then), _depth_card(reading, then), _dead_card(reading),
              _conflicts_card(reading), _drift_card(reading), _errors_card(window, before),
              _throughput_card(window, before)]
    return found


def _freshness_card(fresh: readings.Freshness, lag: readings.LagStats) -> Card:
    """A priority's lag against its target: the p95 of its changes synced in the window, or — when
    a change has waited longer than that — the age of the oldest waiting one (its lag so far)."""
    name = fresh.priority.upper()
    window = duration(settings.FRESHNESS_WINDOW)
    waiting_longer = fresh.oldest_unsynced is not None and (lag.p95 is None or fresh.oldest_unsynced > lag.p95)
    value, unit = split_duration(fresh.worst)
    if fresh.breached:
        state, word = (CRITICAL if fresh.priority == "high" else WARNING), "breached"
    else:
        state, word = OK, "met"
    synced = (f"p95 {duration(lag.p95)} · p50 {duration(lag.p50)} over {lag.n} synced in {window}" if lag.n
              else f"nothing synced in the last {window}")
    waiting = (f"the oldest waiting change is {duration(fresh.oldest_unsynced)} old" if fresh.oldest_unsynced
               is not None else "nothing waiting")
    title = f"{name} lag" + (" (oldest waiting)" if waiting_longer else " p95")
    return Card(f"lag-{fresh.priority}", title, value, unit, state, word,
                f"target {duration(fresh.target)}: {word}", f"{synced} · {waiting}",
                _url("queue", f"?priority={fresh.priority}"), f"{name} queue")


def _oldest_card(reading: readings.Readings, then: MetricSample | None) -> Card:
    ages = {p: a for p, a in reading.oldest_unsynced.items() if a is not None}
    if not ages:
        return Card("oldest", "Oldest unsynced change", "—", "", OK, "none waiting",
                    "every change is in the index", "", _url("queue"), "Queue")
    priority = max(ages, key=ages.get)
    age = ages[priority]
    value, unit = split_duration(age)
    late = age > settings.FRESHNESS_TARGETS[priority]
    earlier = None
    if then is not None:
        old = [a for a in then.data.get("oldest_unsynced", {}).values() if a is not None]
        earlier = max(old) if old else 0.0
    return Card("oldest", "Oldest unsynced change", value, unit, WARNING if late else INFO,
                "older than its target" if late else "within its target",
                _delta(age, earlier, " s"), f"a {priority.upper()} change (target "
                f"{duration(settings.FRESHNESS_TARGETS[priority])})", _url("queue"), "Queue")


def _depth_card(reading: readings.Readings, then: MetricSample | None) -> Card:
    depth = reading.queue_depth
    flying = sum(d["in_flight"] for d in reading.depth.values())
    earlier = None
    if then is not None:
        earlier = sum(sum(d.values()) for d in then.data.get("depth", {}).values())
    over = depth > settings.ALERT_QUEUE_DEPTH
    behind = sum(p.waiting for p in reading.backfills)
    return Card("depth", "Queue depth", str(depth), "events", WARNING if over else (INFO if depth else OK),
                f"above {settings.ALERT_QUEUE_DEPTH}" if over else ("moving" if depth else "empty"),
                _delta(depth, earlier),
                " · ".join(f"{p.upper()} {reading.depth_of(p)}" for p in readings.PRIORITIES) + f" ({flying} in flight)"
                + (f" · {behind:,} backfill events behind them" if behind else ""),
                _url("queue"), "Queue")


def _dead_card(reading: readings.Readings) -> Card:
    n = reading.dead_letters
    return Card("dead", "Dead letters", str(n), "events", WARNING if n > settings.ALERT_DEAD_LETTERS else OK,
                "waiting for an analyst" if n else "none", "retry or discard them on the Queue page" if n
                else "every event was applied or is still being tried", "", _url("queue", "?status=dead"),
                "Dead letters")


def _conflicts_card(reading: readings.Readings) -> Card:
    n = reading.open_conflicts
    return Card("conflicts", "Open conflicts", str(n), "", CONFLICT if n else OK,
                "to resolve" if n else "none", "sources disagree or a store diverged" if n
                else "nothing needs a decision", "", _url("conflicts"), "Conflicts")


def _drift_card(reading: readings.Readings) -> Card:
    run = reading.reconcile.last_finished
    if run is None:
        return Card("drift", "Drift found", "—", "", INFO, "no run yet", "no reconciliation has finished yet", "",
                    _url("reconciliation"), "Reconciliation")
    total = sum(run.drift.values())
    ago = units.age((reading.at - (run.finished_at or run.started_at)).total_seconds())
    kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(run.drift.items()) if n)
    if run.status == run.Status.FAILED:
        state, word = CRITICAL, "run failed"
    else:
        state, word = (WARNING, "drift found") if total else (OK, "in sync")
    what = f"{run.mode}{' dry run' if run.dry_run else ''} #{run.pk}, finished {ago} ago"
    return Card("drift", "Drift found", str(total), "differences", state, word, what, kinds,
                _url("reconciliation"), "Reconciliation")


def _errors_card(window: dict, before: dict | None) -> Card:
    now = rate(window["errors"], window["seconds"])
    then = rate(before["errors"], before["seconds"]) if before else None
    return Card("errors", "Error rate", per_minute(now), "errors/min", WARNING if now else OK,
                "failing" if now else "none", _delta(now, then), f"over the last {duration(window['seconds'])}"
                if window["seconds"] else "no samples yet", _url("queue"), "Queue")


def _throughput_card(window: dict, before: dict | None) -> Card:
    out = rate(window["out"], window["seconds"])
    then = rate(before["out"], before["seconds"]) if before else None
    incoming = rate(window["in"], window["seconds"])
    embedded = rate(window["embedded"], window["seconds"])
    detail = (f"in {per_minute(incoming)}/min · {per_minute(embedded)} chunks embedded/min"
              if window["seconds"] else "no samples yet")
    return Card("throughput", "Throughput", per_minute(out), "events/min", INFO if out else OK,
                "syncing" if out else "idle", _delta(out, then), detail, None)


def services(now: datetime | None = None) -> tuple[list[health.ServiceHealth], datetime | None]:
    """The observer's last pings when fresh (no store is pinged per page view), else pinged now."""
    now = now or timezone.now()
    beat = Heartbeat.objects.filter(name=readings.OBSERVER).only("at", "detail").first()
    if beat is not None and beat.detail.get("services") and (
            (now - beat.at).total_seconds() <= settings.HEARTBEAT_MAX_AGE):
        return health.from_dicts(beat.detail["services"]), beat.at
    return health.check_services(), now


def markers(window: samples.Window) -> list[Marker]:
    """Reconciliation runs and resyncs that started in the range (the newest MAX_MARKERS of each;
    over a day or more, incremental runs only when they failed)."""
    runs = ReconcileRun.objects.filter(started_at__gt=window.since, started_at__lte=window.until)
    if window.resolution != samples.RAW:
        runs = runs.exclude(mode=ReconcileRun.Mode.INCREMENTAL, status=ReconcileRun.Status.SUCCEEDED)
    found = [Marker(r.started_at, "reconciliation",
                    f"{r.mode} reconciliation #{r.pk}{' (dry run)' if r.dry_run else ''}: {r.status}")
             for r in runs.order_by("-started_at").only("id", "mode", "status", "dry_run", "started_at")[:MAX_MARKERS]]
    resyncs = (AuditEntry.objects.filter(action="resync", at__gt=window.since, at__lte=window.until)
               .order_by("-at").only("at", "target", "actor_name")[:MAX_MARKERS])
    found += [Marker(e.at, "resync", f"resync of {e.target} by {e.actor_name}") for e in resyncs]
    found += [Marker(c.at, "canary", f"search canary: {c.label}:{c.uid} not in the top {c.top_k}")
              for c in readings.canary_misses_between(window.since, window.until)[:MAX_MARKERS]]
    return sorted(found, key=lambda m: m.at)


def version(found_cards: list[Card], found_services: list[health.ServiceHealth]) -> str:
    """Changes when a number or state the live region shows does (not with the time of the reading)."""


    state = repr([tuple(vars(c).values()) for c in found_cards]) + repr(
        [(s.name, s.ok, s.target, s.detail) for s in found_services])
    return hashlib.blake2b(state.encode(), digest_size=8).hexdigest()
