"""The Alerts page, acknowledging, and the banner every page carries."""

import pytest
from django.contrib.auth.models import Group, User

from sync.models import AuditEntry, SyncEvent
from sync.observe import alerting, readings
from sync.observe.models import Alert, AlertDelivery
from tests.observe_helpers import waiting

pytestmark = pytest.mark.django_db


def user(name, role=None):
    person = User.objects.create_user(name, password="pw-for-tests-only")
    if role:
        Group.objects.get_or_create(name=role)[0].user_set.add(person)
    return person


@pytest.fixture
def dead_letter_alert(settings):
    settings.ALERT_WEBHOOK_URL, settings.ALERT_EMAIL_TO = "", []
    waiting(status=SyncEvent.Status.DEAD)
    return alerting.evaluate(readings.read(observer_alive=True), rules=(alerting.BY_KEY["dead_letters"],)).opened[0]


def test_anonymous_users_are_sent_to_log_in(client, db):
    for url in ("/alerts/", "/alerts/banner"):
        assert client.get(url)["Location"].startswith("/accounts/login/")
    assert client.post("/alerts/1/acknowledge")["Location"].startswith("/accounts/login/")


def test_the_page_lists_open_alerts_their_deliveries_and_the_rules(client, dead_letter_alert, settings):
    settings.ALERT_WEBHOOK_URL = "https://hooks.example.org/services/T0/B0/very-secret-token"
    AlertDelivery.objects.create(alert=dead_letter_alert, event="opened", channel="webhook", status="failed",
                                 attempts=8, last_error="DeliveryError: the webhook answered HTTP 500")
    client.force_login(user("vera", "viewer"))
    page = client.get("/alerts/").content.decode()
    assert "1 dead letter is waiting for an analyst" in page
    assert "failed</span> after 8 attempts" in page and "HTTP 500" in page
    assert "very-secret-token" not in page and "hooks.example.org" not in page
    assert "a Slack-compatible webhook" in page
    assert "sync_dead_letters &gt; 0" in page  # the rules table
    assert "Acknowledge</button>" not in page  # a viewer has no action button


def test_filters_and_the_empty_state(client, dead_letter_alert):
    client.force_login(user("vera", "viewer"))
    assert "No resolved alerts yet" in client.get("/alerts/?status=resolved").content.decode()
    assert "dead letter" in client.get("/alerts/?status=all&severity=warning").content.decode()
    assert "No open alerts" not in client.get("/alerts/?status=bogus").content.decode()  # bad filter: open


def test_an_analyst_acknowledges_and_it_is_audited(client, dead_letter_alert):
    ann = user("ann", "analyst")
    client.force_login(ann)
    assert "Acknowledge</button>" in client.get("/alerts/").content.decode()
    response = client.post(f"/alerts/{dead_letter_alert.pk}/acknowledge", {"next": "/alerts/?status=open"})
    assert response.status_code == 302 and response["Location"] == "/alerts/?status=open"
    dead_letter_alert.refresh_from_db()
    assert dead_letter_alert.acknowledged_by == ann and dead_letter_alert.status == "open"
    assert AuditEntry.objects.filter(action="alert.acknowledge", actor=ann).count() == 1
    page = client.get("/alerts/").content.decode()
    assert "by ann" in page and "Acknowledged alert" in page
    again = client.post(f"/alerts/{dead_letter_alert.pk}/acknowledge", follow=True)
    assert "Not acknowledged: alert" in again.content.decode() and "already acknowledged by ann" in again.content.decode()


def test_a_viewer_cannot_acknowledge(client, dead_letter_alert):
    client.force_login(user("vera", "viewer"))
    assert client.post(f"/alerts/{dead_letter_alert.pk}/acknowledge").status_code == 403
    assert Alert.objects.get().acknowledged_at is None


def test_acknowledge_is_post_only_and_needs_csrf(dead_letter_alert):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user("ann", "analyst"))
    assert strict.get(f"/alerts/{dead_letter_alert.pk}/acknowledge").status_code == 405
    assert strict.post(f"/alerts/{dead_letter_alert.pk}/acknowledge").status_code == 403


def test_the_banner_is_on_every_page_and_its_poll_sends_nothing_when_unchanged(client, dead_letter_alert):
    client.force_login(user("vera", "viewer"))
    page = client.get("/alerts/").content.decode()
    assert 'id="alert-banner"' in page and 'data-rule="dead_letters"' in page
    version = page.split("/alerts/banner?v=")[1].split('"')[0]
    assert client.get(f"/alerts/banner?v={version}").status_code == 204
    Alert.objects.update(summary="2 dead letters are waiting for an analyst.")
    changed = client.get(f"/alerts/banner?v={version}")
    assert changed.status_code == 200 and "2 dead letters" in changed.content.decode()


def test_alert_text_is_escaped(client, dead_letter_alert):
    Alert.objects.update(summary="<script>alert(1)</script>")
    client.force_login(user("vera", "viewer"))
    page = client.get("/alerts/").content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
