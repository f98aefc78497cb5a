"""Alert rules, and the life of an alert: it opens once, stays open while its rule holds and
resolves itself; analysts acknowledge it.

Flapping: an open alert resolves only after its rule has stopped holding for ALERT_RESOLVE_AFTER
seconds (hysteresis in time; 5 minutes by default). A condition that comes and goes faster than
that keeps one alert open — counted in `flaps` — so it sends one "opened" notification and,
once it has really settled, one "resolved": at most two notifications per rule per
ALERT_RESOLVE_AFTER, whatever the flapping. Opening is never delayed: a critical condition is
reported at the first check that sees it. (Chosen over a cool-down after resolving, which would
either hide a real second breach or still notify on every return.)

Every rule reads one `Readings` (and the service pings); docs/prometheus-rules.yml holds the same
rules for Prometheus, on the gauges /metrics exports from the same readings, and a test keeps
the two alike.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from sync.models import AuditEntry
from sync.observe import readings
from sync.observe.models import ALERT_TITLES, Alert, AlertDelivery
from sync.observe.readings import CAPTURE, OBSERVER, Readings
from sync.observe.units import duration as seconds

log = logging.getLogger(__name__)

WARNING, CRITICAL = Alert.Severity.WARNING, Alert.Severity.CRITICAL
PROCESS_STARTED = time.monotonic()


@dataclass(frozen=True)
class Finding:
    holds: bool
    summary: str
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Rule:
    key: str
    severity: str
    check: Callable[[Readings, dict | None], Finding | None]  # None: cannot tell from this reading
    prometheus: str  # the same condition in PromQL, on the gauges /metrics exports
    needs_services: bool = False

    @property
    def title(self) -> str:
        return ALERT_TITLES[self.key]


def _lag(r: Readings, services) -> Finding:
    p95, limit = r.lag["all"].p95, settings.ALERT_LAG_SECONDS
    window = seconds(settings.FRESHNESS_WINDOW)
    if p95 is None:
        return Finding(False, f"No change was synced in the last {window}.", None, limit)
    return Finding(p95 > limit, f"Lag p95 over the last {window} is {seconds(p95)} (threshold {seconds(limit)}).",
                   p95, limit)


def _queue_depth(r: Readings, services) -> Finding:
    depth, limit = r.queue_depth, settings.ALERT_QUEUE_DEPTH
    parts = ", ".join(f"{p.upper()} {r.depth_of(p)}" for p in r.depth)
    return Finding(depth > limit, f"{depth} events are waiting ({parts}; threshold {limit}).", depth, limit)


def _dead_letters(r: Readings, services) -> Finding:
    n, limit = r.dead_letters, settings.ALERT_DEAD_LETTERS
    noun = "dead letter is" if n == 1 else "dead letters are"
    return Finding(n > limit, f"{n} {noun} waiting for an analyst (retry or discard on the Queue page).", n, limit)


def _freshness(priority: str) -> Callable[[Readings, dict | None], Finding]:
    def check(r: Readings, services) -> Finding:
        f = r.freshness[priority]
        if not f.breached:
            return Finding(False, f"{priority.upper()} changes reach search within {seconds(f.target)}.",
                           f.worst, f.target)
        what = []
        if f.lag_p95 is not None and f.lag_p95 > f.target:
            what.append(f"lag p95 is {seconds(f.lag_p95)}")
        if f.oldest_unsynced is not None and f.oldest_unsynced > f.target:
            what.append(f"the oldest waiting change is {seconds(f.oldest_unsynced)} old")
        return Finding(True, f"{priority.upper()} freshness target {seconds(f.target)} is breached: "
                       f"{' and '.join(what)}.", f.worst, f.target)
    return check


def _reconciliation_failed(r: Readings, services) -> Finding:
    run = r.reconcile.last_finished
    if run is None or run.status != run.Status.FAILED:
        return Finding(False, "The newest reconciliation succeeded." if run else "No reconciliation has run yet.")
    error = (run.error or "no error recorded").splitlines()[0][:300]
    return Finding(True, f"The {run.mode} reconciliation #{run.pk} started {run.started_at:%Y-%m-%d %H:%M} UTC "
                   f"failed: {error}")


def _reconciliation_overdue(r: Readings, services) -> Finding | None:
    limit = settings.ALERT_RECONCILE_OVERDUE_MINUTES * 60
    state = r.reconcile
    if state.last_started_at is not None:
        age = (r.at - state.last_started_at).total_seconds()
        return Finding(age > limit, f"The last reconciliation started {seconds(age)} ago "
                       f"(overdue after {seconds(limit)}).", age, limit)
    if state.scheduled_next is not None:
        late = (r.at - state.scheduled_next).total_seconds()
        return Finding(late > limit, f"No reconciliation has run; the first was due {seconds(max(late, 0))} ago."
                       if late > 0 else "No reconciliation has run yet; the first one is scheduled.", late, limit)
    return Finding(False, "Reconciliation is not scheduled (manage.py setup_schedules creates the schedules).")


def _compensation_failed(r: Readings, services) -> Finding:
    n = r.unreconciled_compensation_failures
    noun = "dual-write saga" if n == 1 else "dual-write sagas"
    return Finding(n > 0, f"{n} {noun} could not undo a graph write after the vector write failed; "
                   "the next successful reconciliation checks those entities.", n, 0)


def _service(name: str, what: str) -> Callable[[Readings, dict | None], Finding | None]:
    def check(r: Readings, services) -> Finding | None:
        if services is None or name not in services:
            return None
        health = services[name]
        if health.ok:
            return Finding(False, f"{health.kind} at {health.target} answers.")
        return Finding(True, f"{health.kind} at {health.target} does not answer: {health.detail[:300]}")
    return check


def _workers(r: Readings, services) -> Finding | None:
    limit = settings.HEARTBEAT_MAX_AGE
    stale = []
    observer = r.heartbeats.get(OBSERVER)
    if observer is None or observer > limit:
        stale.append("the observer has never reported" if observer is None
                     else f"the observer last reported {seconds(observer)} ago")
    capture = r.heartbeats.get(CAPTURE)
    graph_down = services is not None and "graph" in services and not services["graph"].ok
    starting = capture is None and time.monotonic() - PROCESS_STARTED < limit  # its first poll is on its way
    if not graph_down and not starting and (capture is None or capture > limit):  # no polls while Neo4j is down
        stale.append("change capture has never polled" if capture is None
                     else f"change capture last polled {seconds(capture)} ago")
    known = [a for a in (observer, capture) if a is not None]
    return Finding(bool(stale), ("The django-q2 workers are not heartbeating: " + "; ".join(stale) + "."
                                 if stale else "The workers are heartbeating."),
                   max(known) if known else None, limit)


def _search_canary(r: Readings, services) -> Finding | None:
    checks = [c for c in readings.canary_latest_round(r.at) if not c.error]
    if not checks:
        return None  # no recent round that searched: nothing to judge
    missed = [c for c in checks if not c.found]
    if not missed:
        return Finding(False, f"The search canary found all {len(checks)} recently synced HIGH entities "
                       f"in the top {checks[0].top_k}.", 0, 0)
    names = ", ".join(f"{c.label}:{c.uid}"[:80] for c in missed)
    return Finding(True, f"The search canary missed {len(missed)} of {len(checks)} recently synced HIGH entities "
                   f"({names}): searched for by their own text, they did not come back in the top "
                   f"{missed[0].top_k}.", len(missed), 0)


def _backfill_stalled(r: Readings, services) -> Finding:
    limit = settings.BACKFILL_STALL_MINUTES * 60
    running = [p for p in r.backfills if not p.finished]
    if not running:
        return Finding(False, "No backfill is running.", None, limit)
    slowest = max(running, key=lambda p: p.idle)
    stalled = [p for p in running if p.stalled]
    if not stalled:
        return Finding(False, f"{len(running)} backfill{'s are' if len(running) > 1 else ' is'} moving.",
                       slowest.idle, limit)
    what = "; ".join(f"{p.title} #{p.backfill.pk} ({p.scope_words}) has finished nothing for {seconds(p.idle)}: "
                     f"{p.done} of {p.total} entities done, {p.remaining} to go" for p in stalled)
    return Finding(True, f"{what} (threshold {seconds(limit)}). Are the workers running, and the stores "
                   "answering? Its events are on the Queue page.", slowest.idle, limit)


RULES: tuple[Rule, ...] = (
    Rule("lag", WARNING, _lag,
         'sync_window_lag_seconds{priority="all",quantile="95"} > $ALERT_LAG_SECONDS'),
    Rule("queue_depth", WARNING, _queue_depth,
         "sum(sync_queue_depth) > $ALERT_QUEUE_DEPTH"),
    Rule("dead_letters", WARNING, _dead_letters,
         "sync_dead_letters > $ALERT_DEAD_LETTERS"),
    Rule("freshness_high", CRITICAL, _freshness("high"),
         'sync_freshness_breached{priority="high"} == 1'),
    Rule("freshness_medium", WARNING, _freshness("medium"),
         'sync_freshness_breached{priority="medium"} == 1'),
    Rule("freshness_low", WARNING, _freshness("low"),
         'sync_freshness_breached{priority="low"} == 1'),
    Rule("reconciliation_failed", CRITICAL, _reconciliation_failed,
         "sync_reconciliation_last_failed == 1"),
    Rule("reconciliation_overdue", CRITICAL, _reconciliation_overdue,
         "time() - sync_reconciliation_last_start_timestamp_seconds > $ALERT_RECONCILE_OVERDUE_SECONDS"),
    Rule("compensation_failed", CRITICAL, _compensation_failed,
         "sync_compensation_failures_unreconciled > 0"),
    Rule("graph_unreachable", CRITICAL, _service("graph", "Neo4j"),
         'sync_service_up{service="graph"} == 0', needs_services=True),
    Rule("vector_store_unreachable", CRITICAL, _service("vector_store", "vector store"),
         'sync_service_up{service="vector_store"} == 0', needs_services=True),
    Rule("workers_heartbeat", CRITICAL, _workers,
         '(max(sync_heartbeat_age_seconds) > $HEARTBEAT_MAX_AGE) or absent(sync_heartbeat_age_seconds{worker="observer"})'),
    Rule("search_canary", WARNING, _search_canary, "sync_search_canary_misses > 0"),
    Rule("backfill_stalled", WARNING, _backfill_stalled,
         "max(sync_backfill_idle_seconds) > $BACKFILL_STALL_SECONDS"),
)
BY_KEY = {rule.key: rule for rule in RULES}
if set(BY_KEY) != set(ALERT_TITLES):
    raise ValueError("every alert rule has one title in sync.observe.models.ALERT_TITLES, and only rules do")


def thresholds() -> dict[str, float]:
    """The values the `$NAME`s in the rules' PromQL stand for (from settings)."""
    return {
        "ALERT_LAG_SECONDS": settings.ALERT_LAG_SECONDS,
        "ALERT_QUEUE_DEPTH": settings.ALERT_QUEUE_DEPTH,
        "ALERT_DEAD_LETTERS": settings.ALERT_DEAD_LETTERS,
        "ALERT_RECONCILE_OVERDUE_SECONDS": settings.ALERT_RECONCILE_OVERDUE_MINUTES * 60,
        "HEARTBEAT_MAX_AGE": settings.HEARTBEAT_MAX_AGE,
        "BACKFILL_STALL_SECONDS": settings.BACKFILL_STALL_MINUTES * 60,
    }


def promql(rule: Rule) -> str:
    expr = rule.prometheus
    for name, value in sorted(thresholds().items(), key=lambda item: -len(item[0])):
        expr = expr.replace(f"${name}", f"{value:g}")
    return expr


@dataclass
class Changes:
    opened: list[Alert]
    resolved: list[Alert]
    still_open: int


def evaluate(reading: Readings, services: dict | None = None, *, rules: tuple[Rule, ...] = RULES,
             now: datetime | None = None) -> Changes:
    """Judge every rule on one reading; open, update and resolve alerts accordingly.

    `services`: {name: ServiceHealth} from a ping, or None when not pinged (those rules keep
    their state)."""
    now = now or timezone.now()
    changes = Changes([], [], 0)
    open_alerts = {a.rule: a for a in Alert.objects.filter(status=Alert.Status.OPEN, rule__in=[r.key for r in rules])}
    for rule in rules:
        finding = rule.check(reading, services)
        if finding is None:
            continue
        alert = open_alerts.get(rule.key)
        if finding.holds:
            if alert is None:
                alert = _open(rule, finding, now)
                if alert is not None:
                    changes.opened.append(alert)
            else:
                _still_holds(alert, finding, now)
            changes.still_open += alert is not None
        elif alert is not None:
            if _clears(alert, finding, now):
                changes.resolved.append(alert)
            else:
                changes.still_open += 1
    return changes


def _open(rule: Rule, finding: Finding, now: datetime) -> Alert | None:
    try:
        with transaction.atomic():
            alert = Alert.objects.create(rule=rule.key, severity=rule.severity, summary=finding.summary,
                                         value=finding.value, threshold=finding.threshold, opened_at=now,
                                         last_seen_at=now)
            _notify(alert, AlertDelivery.Event.OPENED, now)
    except IntegrityError:
        return None  # another process opened it a moment ago
    log.warning("alert opened: %s (%s): %s", rule.key, rule.severity, finding.summary)
    return alert


def _still_holds(alert: Alert, finding: Finding, now: datetime) -> None:
    fields = {"summary": finding.summary, "value": finding.value, "threshold": finding.threshold,
              "last_seen_at": now}
    if alert.clear_since is not None:
        fields.update(clear_since=None, flaps=F("flaps") + 1)
    Alert.objects.filter(pk=alert.pk, status=Alert.Status.OPEN).update(**fields)


def _clears(alert: Alert, finding: Finding, now: datetime) -> bool:
    """True when this check resolved the alert."""
    since = alert.clear_since or now
    if (now - since) < timedelta(seconds=settings.ALERT_RESOLVE_AFTER):
        if alert.clear_since is None:
            Alert.objects.filter(pk=alert.pk, status=Alert.Status.OPEN).update(clear_since=now)
        return False
    with transaction.atomic():
        resolved = Alert.objects.filter(pk=alert.pk, status=Alert.Status.OPEN).update(
            status=Alert.Status.RESOLVED, resolved_at=now, summary=finding.summary, value=finding.value,
            clear_since=since)
        if resolved:
            alert.status, alert.resolved_at = Alert.Status.RESOLVED, now
            _notify(alert, AlertDelivery.Event.RESOLVED, now)
    if resolved:
        log.warning("alert resolved: %s: %s", alert.rule, finding.summary)
    return bool(resolved)


def channels() -> list[str]:
    configured = []
    if settings.ALERT_WEBHOOK_URL:
        configured.append(AlertDelivery.Channel.WEBHOOK)
    if settings.ALERT_EMAIL_TO:
        configured.append(AlertDelivery.Channel.EMAIL)
    return configured


def _notify(alert: Alert, event: str, now: datetime) -> None:
    AlertDelivery.objects.bulk_create([AlertDelivery(alert=alert, event=event, channel=channel, created_at=now,
                                                     next_attempt_at=now) for channel in channels()])


def watch_the_watcher(reading: Readings) -> Changes | None:
    """The observer cannot report its own death: whoever notices a stale observer heartbeat
    (`observer.report_if_stopped`, from the upkeep task) judges the heartbeat rule itself. Does nothing while
    the observer beats (it judges the rule then) or while this process is younger than
    HEARTBEAT_MAX_AGE and no heartbeat was ever written (everything is still starting)."""
    age = reading.heartbeats.get(OBSERVER)
    if age is not None and age <= settings.HEARTBEAT_MAX_AGE:
        return None
    if age is None and time.monotonic() - PROCESS_STARTED < settings.HEARTBEAT_MAX_AGE:
        return None
    return evaluate(reading, None, rules=(BY_KEY["workers_heartbeat"],))


class NotAcknowledgeable(Exception):
    pass


def acknowledge(alert_id: int, user, note: str = "") -> Alert:
    """Mark an open alert seen by `user` (audited); it stays open until its rule stops holding."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(pk=alert_id).first()
        if alert is None:
            raise NotAcknowledgeable(f"there is no alert #{alert_id}")
        if alert.status != Alert.Status.OPEN:
            raise NotAcknowledgeable(f"alert #{alert_id} is already resolved")
        if alert.acknowledged_at is not None:
            raise NotAcknowledgeable(f"alert #{alert_id} was already acknowledged by {alert.acknowledged_name}")
        alert.acknowledged_at = timezone.now()
        alert.acknowledged_by = user if getattr(user, "pk", None) else None
        alert.acknowledged_name = user.get_username() if getattr(user, "pk", None) else str(user)
        alert.save(update_fields=["acknowledged_at", "acknowledged_by", "acknowledged_name"])
        AuditEntry.record(user, "alert.acknowledge", f"alert:{alert.pk} {alert.rule}",
                          before={"acknowledged": False},
                          after={"acknowledged": True, "severity": alert.severity, "summary": alert.summary},
                          note=note)
    return alert


def open_alerts() -> list[Alert]:
    """Open alerts, critical first, then the oldest (for the banner on every page: one query)."""
    alerts = list(Alert.objects.filter(status=Alert.Status.OPEN).only(
        "id", "rule", "severity", "summary", "opened_at", "clear_since", "acknowledged_at", "acknowledged_name"))
    alerts.sort(key=lambda a: (not a.is_critical, a.opened_at))
    return alerts


def prometheus_rules() -> dict:
    """The in-app rules as a Prometheus rule file (docs/prometheus-rules.yml is this, with the
    default thresholds; `manage.py observe_rules` prints it with the configured ones).
    `keep_firing_for` is ALERT_RESOLVE_AFTER, the same hysteresis as in the app."""
    keep = f"{settings.ALERT_RESOLVE_AFTER:g}s"
    return {"groups": [{
        "name": "nightingale-sync",
        "rules": [{
            "alert": "NightingaleSync" + "".join(part.capitalize() for part in rule.key.split("_")),
            "expr": promql(rule),
            "keep_firing_for": keep,
            "labels": {"severity": str(rule.severity), "rule": rule.key},
            "annotations": {"summary": rule.title},
        } for rule in RULES],
    }]}


def rule_table() -> list[dict]:
    """The rules with their current thresholds, for the Alerts page."""
    return [{"key": r.key, "severity": str(r.severity), "title": r.title, "promql": promql(r)} for r in RULES]


def channel_summary() -> list[str]:
    """Where notifications go, in words (never the webhook URL: it is a secret)."""
    found = []
    if settings.ALERT_WEBHOOK_URL:
        found.append("a Slack-compatible webhook")
    if settings.ALERT_EMAIL_TO:
        n = len(settings.ALERT_EMAIL_TO)
        found.append(f"e-mail to {n} address{'es' if n > 1 else ''}")
    return found


def banner_version(alerts) -> str:
    """Changes whenever what the banner shows does (a poll that finds the same sends nothing)."""
    state = "|".join(f"{a.pk}:{a.summary}:{a.clear_since}:{a.acknowledged_at}" for a in alerts)
    return hashlib.blake2b(state.encode(), digest_size=8).hexdigest()
