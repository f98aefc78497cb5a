"""Alert rules and deliveries, against a local HTTP receiver (the webhook) and Django's mail outbox."""

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.core import mail
from django.utils import timezone

from sync.models import AuditEntry, Priority, ReconcileRun, SagaLog, SyncEvent
from sync.observe import alerting, delivery, readings
from sync.observe.models import Alert, AlertDelivery, Heartbeat
from sync.observe.readings import CAPTURE, OBSERVER
from tests.observe_helpers import Receiver, finished, waiting

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


def judge(now=None, services=None, rules=alerting.RULES):
    return alerting.evaluate(readings.read(now, observer_alive=True), services, rules=rules, now=now)


def only(*keys):
    return tuple(alerting.BY_KEY[k] for k in keys)


@pytest.fixture
def webhook(settings):
    with Receiver() as receiver:
        settings.ALERT_WEBHOOK_URL = receiver.url
        settings.ALERT_EMAIL_TO = []
        settings.ALERT_DELIVERY_BACKOFF = 0
        yield receiver


def test_a_lag_breach_opens_one_alert_and_resolves_itself_with_one_webhook_each(webhook, settings):
    settings.ALERT_LAG_SECONDS, settings.ALERT_RESOLVE_AFTER, settings.FRESHNESS_WINDOW = 60, 30, 300
    base = timezone.now()
    slow = [finished(95.0, at=base - timedelta(seconds=5)) for _ in range(3)]
    for k in range(4):  # the condition holds at four checks: one alert, one notification
        changes = judge(base + timedelta(seconds=15 * k), rules=only("lag"))
        delivery.deliver_due(base + timedelta(seconds=15 * k))
        assert len(changes.opened) == (1 if k == 0 else 0)
    alert = Alert.objects.get()
    assert alert.status == "open" and alert.severity == "warning" and alert.value == pytest.approx(95.0)
    assert "95 s" in alert.summary and "threshold 60 s" in alert.summary
    assert webhook.events() == [("lag", "opened")]

    SyncEvent.objects.filter(pk__in=[e.pk for e in slow]).update(lag_seconds=2.0)  # lag is back to normal
    t = base + timedelta(seconds=60)
    judge(t, rules=only("lag"))
    assert Alert.objects.get().status == "open"  # cleared, but not for ALERT_RESOLVE_AFTER yet
    judge(t + timedelta(seconds=31), rules=only("lag"))
    delivery.deliver_due(t + timedelta(seconds=31))
    alert.refresh_from_db()
    assert alert.status == "resolved" and alert.resolved_at == t + timedelta(seconds=31)
    assert webhook.events() == [("lag", "opened"), ("lag", "resolved")]
    opened, resolved = webhook.bodies
    assert opened["text"].startswith("WARNING: Sync lag above threshold") and opened["attachments"][0]["color"]
    assert resolved["text"].startswith("Resolved: Sync lag above threshold")


def test_a_flapping_condition_sends_no_storm(webhook, settings):
    settings.ALERT_RESOLVE_AFTER, settings.ALERT_DEAD_LETTERS = 60, 0
    base = timezone.now()
    dead = None
    for k in range(12):  # a dead letter that comes and goes at every other check for three minutes
        if k % 2 == 0:
            dead = waiting(status=SyncEvent.Status.DEAD)
        else:
            dead.delete()
        judge(base + timedelta(seconds=15 * k), rules=only("dead_letters"))
        delivery.deliver_due(base + timedelta(seconds=15 * k))
    alert = Alert.objects.get()
    assert alert.status == "open" and alert.flaps == 5
    assert webhook.events() == [("dead_letters", "opened")]
    t = base + timedelta(seconds=15 * 12)
    for k in range(6):  # now it stays clear
        judge(t + timedelta(seconds=15 * k), rules=only("dead_letters"))
        delivery.deliver_due(t + timedelta(seconds=15 * k))
    assert webhook.events() == [("dead_letters", "opened"), ("dead_letters", "resolved")]
    assert Alert.objects.count() == 1


def test_a_failing_webhook_is_retried_with_backoff_and_the_attempts_are_recorded(settings):
    with Receiver(statuses=[500, 503]) as receiver:
        settings.ALERT_WEBHOOK_URL, settings.ALERT_EMAIL_TO = receiver.url, []
        settings.ALERT_DELIVERY_BACKOFF = 10
        waiting(status=SyncEvent.Status.DEAD)
        judge(rules=only("dead_letters"))
        assert delivery.deliver_due() == {"sent": 0, "retrying": 1, "failed": 0}
        sent = AlertDelivery.objects.get()
        assert sent.status == "pending" and sent.attempts == 1 and "HTTP 500" in sent.last_error
        assert "secret-token" not in sent.last_error
        backoff = (sent.next_attempt_at - timezone.now()).total_seconds()
        assert 5 < backoff <= 10
        assert delivery.deliver_due() == {"sent": 0, "retrying": 0, "failed": 0}  # not due yet
        later = timezone.now() + timedelta(seconds=11)
        assert delivery.deliver_due(later) == {"sent": 0, "retrying": 1, "failed": 0}
        sent.refresh_from_db()
        assert (sent.next_attempt_at - timezone.now()).total_seconds() > 15  # doubled
        assert delivery.deliver_due(timezone.now() + timedelta(seconds=25)) == {"sent": 1, "retrying": 0, "failed": 0}
        sent.refresh_from_db()
        assert sent.status == "sent" and sent.attempts == 3 and sent.sent_at
        assert receiver.events() == [("dead_letters", "opened")]


def test_a_webhook_nobody_answers_fails_after_its_attempts(settings):
    settings.ALERT_WEBHOOK_URL = "http://127.0.0.1:9/hooks/secret-token"  # discard port: refused
    settings.ALERT_EMAIL_TO, settings.ALERT_DELIVERY_ATTEMPTS, settings.ALERT_DELIVERY_BACKOFF = [], 2, 0
    waiting(status=SyncEvent.Status.DEAD)
    judge(rules=only("dead_letters"))
    assert delivery.deliver_due()["retrying"] == 1
    assert delivery.deliver_due()["failed"] == 1
    failed = AlertDelivery.objects.get()
    assert failed.status == "failed" and "could not be reached" in failed.last_error
    assert "secret-token" not in failed.last_error


def test_alerts_go_by_email_too(settings):
    settings.ALERT_WEBHOOK_URL, settings.ALERT_EMAIL_TO = "", ["oncall@example.org"]
    waiting(priority=Priority.HIGH, age=300)  # a KEV waiting five minutes
    changes = judge(rules=only("freshness_high"))
    assert changes.opened[0].severity == "critical"
    delivery.deliver_due()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["oncall@example.org"]
    assert message.subject == "[Nightingale Sync] CRITICAL: HIGH freshness target breached"
    assert "oldest waiting change is 5 min old" in message.body


def test_no_channel_configured_records_no_delivery(settings):
    settings.ALERT_WEBHOOK_URL, settings.ALERT_EMAIL_TO = "", []
    waiting(status=SyncEvent.Status.DEAD)
    assert judge(rules=only("dead_letters")).opened
    assert not AlertDelivery.objects.exists()


def test_acknowledging_is_audited_and_keeps_the_alert_open(django_user_model, settings):
    settings.ALERT_WEBHOOK_URL, settings.ALERT_EMAIL_TO = "", []
    analyst = django_user_model.objects.create_user("ann", password="x")
    waiting(status=SyncEvent.Status.DEAD)
    alert = judge(rules=only("dead_letters")).opened[0]
    alerting.acknowledge(alert.pk, analyst)
    alert.refresh_from_db()
    assert alert.status == "open" and alert.acknowledged_name == "ann" and alert.acknowledged_by == analyst
    entry = AuditEntry.objects.get(action="alert.acknowledge")
    assert entry.actor == analyst and entry.target == f"alert:{alert.pk} dead_letters"
    with pytest.raises(alerting.NotAcknowledgeable, match="already acknowledged by ann"):
        alerting.acknowledge(alert.pk, analyst)
    with pytest.raises(alerting.NotAcknowledgeable, match="no alert"):
        alerting.acknowledge(alert.pk + 1000, analyst)


def test_queue_depth_rule(settings):
    settings.ALERT_QUEUE_DEPTH, settings.ALERT_WEBHOOK_URL = 2, ""
    for _ in range(3):
        waiting(priority=Priority.LOW)
    alert = judge(rules=only("queue_depth")).opened[0]
    assert alert.summary == "3 events are waiting (HIGH 0, MEDIUM 0, LOW 3; threshold 2)."


def test_reconciliation_failed_and_overdue(settings):
    settings.ALERT_RECONCILE_OVERDUE_MINUTES, settings.ALERT_WEBHOOK_URL = 20, ""
    now = timezone.now()
    ReconcileRun.objects.create(mode="incremental", status="failed", error="Neo4j: connection refused\ntrace",
                                started_at=now - timedelta(minutes=30), finished_at=now - timedelta(minutes=29))
    opened = {a.rule: a for a in judge(rules=only("reconciliation_failed", "reconciliation_overdue")).opened}
    assert opened["reconciliation_failed"].summary.endswith("failed: Neo4j: connection refused")
    assert opened["reconciliation_overdue"].severity == "critical"
    settings.ALERT_RESOLVE_AFTER = 0
    ReconcileRun.objects.create(mode="incremental", status="succeeded", started_at=now, finished_at=now)
    resolved = judge(rules=only("reconciliation_failed", "reconciliation_overdue")).resolved
    assert {a.rule for a in resolved} == {"reconciliation_failed", "reconciliation_overdue"}


def test_a_failed_compensation_is_open_until_a_later_reconciliation_succeeds(settings):
    settings.ALERT_RESOLVE_AFTER, settings.ALERT_WEBHOOK_URL = 0, ""
    now = timezone.now()
    SagaLog.objects.create(label="KEV", uid="CVE-1", status="compensation_failed", started_at=now - timedelta(minutes=1))
    assert judge(rules=only("compensation_failed")).opened[0].severity == "critical"
    ReconcileRun.objects.create(mode="full", status="succeeded", dry_run=True, started_at=now, finished_at=now)
    assert not judge(rules=only("compensation_failed")).resolved  # a dry run repairs nothing
    ReconcileRun.objects.create(mode="incremental", status="succeeded", started_at=now, finished_at=now)
    assert judge(rules=only("compensation_failed")).resolved


def test_an_unreachable_graph_is_critical_and_unpinged_services_keep_their_state(settings):
    from sync.observe.health import ServiceHealth

    settings.ALERT_RESOLVE_AFTER, settings.ALERT_WEBHOOK_URL = 0, ""
    down = {"graph": ServiceHealth("graph", "Neo4j", "bolt://127.0.0.1:9", False, "connection refused", 1.0)}
    alert = judge(services=down, rules=only("graph_unreachable")).opened[0]
    assert alert.summary == "Neo4j at bolt://127.0.0.1:9 does not answer: connection refused"
    assert not judge(services=None, rules=only("graph_unreachable")).resolved
    up = {"graph": ServiceHealth("graph", "Neo4j", "bolt://127.0.0.1:9", True, "Neo4j 5.26", 1.0)}
    assert judge(services=up, rules=only("graph_unreachable")).resolved


def test_workers_not_heartbeating(settings):
    from sync.models import ChangeCursor

    settings.HEARTBEAT_MAX_AGE, settings.ALERT_RESOLVE_AFTER, settings.ALERT_WEBHOOK_URL = 60, 0, ""
    ChangeCursor.objects.create(name="neo4j", polled_at=timezone.now() - timedelta(minutes=5))
    alert = judge(rules=only("workers_heartbeat")).opened[0]
    assert "change capture last polled 5 min ago" in alert.summary
    ChangeCursor.objects.update(polled_at=timezone.now())
    assert judge(rules=only("workers_heartbeat")).resolved


def test_a_stale_observer_is_reported_by_whoever_notices(settings):
    from sync.models import ChangeCursor

    settings.HEARTBEAT_MAX_AGE, settings.ALERT_WEBHOOK_URL = 60, ""
    ChangeCursor.objects.create(name="neo4j", polled_at=timezone.now())
    Heartbeat.objects.create(name=OBSERVER, at=timezone.now(), owner="w1")
    assert alerting.watch_the_watcher(readings.read()) is None  # the observer judges it itself
    Heartbeat.objects.update(at=timezone.now() - timedelta(minutes=3))
    changes = alerting.watch_the_watcher(readings.read())
    assert "the observer last reported 3 min ago" in changes.opened[0].summary
    assert readings.read().heartbeats[CAPTURE] is not None


def test_the_banner_lists_open_alerts_critical_first(settings):
    settings.ALERT_WEBHOOK_URL, settings.ALERT_QUEUE_DEPTH = "", 0
    waiting(status=SyncEvent.Status.DEAD)
    judge(rules=only("dead_letters"))
    waiting(priority=Priority.HIGH, age=600)
    judge(rules=only("freshness_high", "queue_depth"))
    assert [a.rule for a in alerting.open_alerts()] == ["freshness_high", "dead_letters", "queue_depth"]


def test_the_example_prometheus_rules_match_the_in_app_rules(settings):
    shipped = yaml.safe_load((ROOT / "docs" / "prometheus-rules.yml").read_text())
    rules = shipped["groups"][0]["rules"]
    assert [r["labels"]["rule"] for r in rules] == [r.key for r in alerting.RULES]
    for rule, in_app in zip(rules, alerting.RULES, strict=True):
        assert rule["labels"]["severity"] == in_app.severity
        assert rule["expr"] == alerting.promql(in_app)  # thresholds: the defaults
        assert rule["keep_firing_for"] == f"{settings.ALERT_RESOLVE_AFTER:g}s"
    assert shipped == alerting.prometheus_rules()
    assert 'sync_window_lag_seconds{priority="all",quantile="95"} > 60' in [r["expr"] for r in rules]
