"""The Queue page: numbers by priority, dead-letter groups, confirmations, snapshot actions."""

from datetime import timedelta

import pytest
from django.utils import timezone

from sync import deadletters
from sync.models import AuditEntry, Priority, SyncEvent

pytestmark = pytest.mark.django_db


def dead(uid, error="ReadTimeout: timed out after 10 s", label="ThreatActor", died=None):
    return SyncEvent.objects.create(label=label, uid=uid, status=SyncEvent.Status.DEAD, last_error=error,
                                    attempts=8, finished_at=died or timezone.now())


def test_the_queue_shows_depth_by_priority_and_batches_in_flight(client, viewer):
    now = timezone.now()
    SyncEvent.objects.create(label="KEV", uid="CVE-1", priority=Priority.HIGH, created_at=now - timedelta(minutes=3))
    SyncEvent.objects.create(label="Report", uid="r1", priority=Priority.LOW, next_attempt_at=now + timedelta(minutes=5))
    SyncEvent.objects.create(label="Report", uid="r2", priority=Priority.LOW, status="in_flight",
                             claim_token="host-a:123:abcd", lease_expires_at=now + timedelta(minutes=4), attempts=2)
    client.force_login(viewer)
    page = client.get("/queue/")
    context = page.context
    lanes = {lane.priority: lane for lane in context["summary"].lanes}
    assert (lanes["high"].queued, lanes["low"].queued, lanes["low"].backing_off, lanes["low"].in_flight) == (1, 1, 1, 1)
    assert context["summary"].depth == 3
    html = page.content.decode()
    assert "host-a:123" in html and 'id="queue-depth">3<' in html
    assert "No dead letters: every event either was applied" in html


def test_groups_and_a_viewer_sees_no_action(client, viewer):
    for i in range(3):
        dead(f"apt{i}", f"vector ThreatActor:apt{i}#0 has {380 + i} dimensions, expected 384")
    dead("x", "ServiceUnavailable")
    client.force_login(viewer)
    html = client.get("/queue/").content.decode()
    assert "vector &lt;entity&gt; has &lt;n&gt; dimensions, expected &lt;n&gt;" in html
    assert "Retry group" not in html and "Discard" not in html and "Retry all" not in html
    group = deadletters.groups()[0]
    listing = client.get(f"/queue/dead/?group={group.key}").content.decode()
    assert "ThreatActor:apt2" in listing and 'type="checkbox"' not in listing and "Retry selected" not in listing


def test_an_analyst_confirms_a_group_retry_which_leaves_later_deaths_alone(client, analyst_user):
    shown = [dead(f"a{i}") for i in range(3)]
    client.force_login(analyst_user)
    page = client.get("/queue/")
    assert "Retry group" in page.content.decode()
    as_of = page.context["as_of_iso"]
    key = page.context["groups"][0].key
    confirm = client.get("/queue/dead/confirm", {"action": "retry", "group": key, "as_of": as_of})
    text = confirm.content.decode()
    assert "Retry 3 dead letters from ThreatActor with the error “ReadTimeout: timed out after &lt;n&gt; s”?" in text
    assert f"manage.py dead_letters retry --group {key} --before" in text
    late = dead("late", died=timezone.now() + timedelta(seconds=5))  # died after the page was shown
    response = client.post("/queue/dead/retry", {"group": key, "as_of": as_of})
    assert response.status_code == 302
    assert set(SyncEvent.objects.filter(status="queued").values_list("id", flat=True)) == {e.id for e in shown}
    assert SyncEvent.objects.get(pk=late.pk).status == "dead"
    message = [str(m) for m in client.get("/queue/").context["messages"]]
    assert message == ["Retried 3 dead letters: they are queued again (audited as dead_letter.retry, one entry per event)."]


def test_discarding_the_selected_keeps_a_note(client, analyst_user):
    a, b, c = dead("a"), dead("b"), dead("c")
    client.force_login(analyst_user)
    confirm = client.get("/queue/dead/confirm", {"action": "discard", "ids": [a.pk, b.pk]})
    assert "Discard 2 dead letters you selected?" in confirm.content.decode()
    client.post("/queue/dead/discard", {"ids": [a.pk, b.pk], "note": "bad source data"})
    assert list(SyncEvent.objects.filter(status="dead").values_list("id", flat=True)) == [c.pk]
    assert set(AuditEntry.objects.filter(action="dead_letter.discard").values_list("note", flat=True)) == {"bad source data"}


@pytest.mark.parametrize(("data", "message"), [
    ({"ids": "x"}, "ids must be event numbers"),
    ({"group": "not-a-key", "as_of": "2026-01-01T00:00:00+00:00"}, "group must be a 12-character group key"),
    ({"label": "KEV"}, "as_of is missing"),
    ({"label": "KEV", "as_of": "yesterday"}, "as_of must be an ISO 8601 time"),
    ({}, "nothing selected"),
    ({"ids": "1", "label": "KEV"}, "either by id or by filter"),
])
def test_bad_selections_are_refused_with_a_reason(client, analyst_user, data, message):
    event = dead("a")
    client.force_login(analyst_user)
    response = client.post("/queue/dead/retry", data)
    assert response.status_code == 400 and message in response.content.decode()
    assert SyncEvent.objects.get(pk=event.pk).status == "dead"
    assert client.get("/queue/dead/confirm", {"action": "retry", **data}).status_code == 400


def test_retry_all_unfiltered_needs_scope_all(client, analyst_user):
    dead("a")
    dead("b", label="Malware")
    client.force_login(analyst_user)
    as_of = client.get("/queue/").context["as_of_iso"]
    confirm = client.get("/queue/dead/confirm", {"action": "retry", "scope": "all", "as_of": as_of})
    assert "Retry all 2 dead letters?" in confirm.content.decode()
    assert 'name="scope" value="all"' in confirm.content.decode()
    client.post("/queue/dead/retry", {"scope": "all", "as_of": as_of})
    assert not SyncEvent.objects.filter(status="dead").exists()


def test_the_live_poll_sends_nothing_while_nothing_changed(client, viewer):
    client.force_login(viewer)
    version = client.get("/queue/").context["live_version"]
    assert client.get("/queue/live", {"v": version}).status_code == 204
    dead("new")
    changed = client.get("/queue/live", {"v": version})
    assert changed.status_code == 200 and 'id="dead-letter-count">1<' in changed.content.decode()
    assert len(changed.content) < 5000
