"""The audit log and the policy page in real Chromium: filtering by action and user, paging
back and forth, the CSV download, axe-core and screenshots."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from sync.models import AuditEntry
from tests.browser.conftest import check
from tests.conftest import make_user
from tests.test_pages import hostile  # noqa: F401, F811 — the fixture: hostile text in every table

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
HOSTILE = "<img src=x onerror=alert(1)>"


def test_filter_page_and_export_the_audit_log(live_server, page, as_user):
    as_user(make_user("vic", "viewer"))
    # The reader's role assignment is audited (dashboard.user_audit); this test counts its own 130.
    AuditEntry.objects.filter(target="user:vic").delete()
    now = timezone.now()
    AuditEntry.objects.bulk_create([
        AuditEntry(at=now - timedelta(minutes=n), actor_name=("ana", "ben")[n % 2],
                   action=("dead_letter.retry", "conflict.resolve")[n % 2], target=f"ThreatActor:apt{n}{HOSTILE}",
                   before={"severity": "high"}, after={"severity": f"critical {HOSTILE}"}, note=f"=cmd|' /C calc'!A{n}")
        for n in range(130)])
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(live_server.url + "/audit/")
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    expect(page.locator("#audit tbody tr")).to_have_count(50)
    check(page, "audit")
    page.locator("select[name=action]").select_option("conflict.resolve")
    page.locator("input[name=user]").fill("ben")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"user=ben&action=conflict.resolve"))
    assert page.evaluate("document.querySelector('input[name=user]').value") == "ben"
    expect(page.locator("#audit-count")).to_contain_text("65 entries match this filter")
    rows = page.locator("#audit tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("ThreatActor:apt1<img")  # shown as text, never run
    page.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(15)
    expect(rows.last).to_contain_text("apt129")
    page.get_by_role("link", name="← Newer").click()
    expect(rows).to_have_count(50)
    assert page.evaluate("document.querySelector('input[name=user]').value") == "ben"
    expect(rows.first).to_contain_text("apt1<img")
    check(page, "audit-filtered", dark=False)
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV (filtered)").click()
    table = list(csv.reader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert len(table) == 66 and {row[2] for row in table[1:]} == {"ben"}
    assert all(row[7].startswith("'=") for row in table[1:])
    page.go_back()
    page.get_by_role("link", name="Clear").click()
    expect(page.locator("#audit-count")).to_contain_text("130 entries")
    assert dialogs == []


def test_the_policy_page(live_server, page, as_user):
    as_user(make_user("vic", "viewer"))
    page.goto(live_server.url + "/policy/")
    expect(page.get_by_role("heading", name="Policy", exact=True)).to_be_visible()
    expect(page.locator("#label-KEV")).to_contain_text("HIGH")
    expect(page.locator("#label-KEV")).to_contain_text("Sync dual-write")
    expect(page.get_by_role("heading", name="Never sent")).to_be_visible()
    nav = page.get_by_role("navigation", name="Pages")
    expect(nav.get_by_role("link", name="Policy")).to_have_attribute("aria-current", "page")
    expect(page.locator("form[method=post]")).to_have_count(1)  # log out only
    check(page, "policy")


def test_a_viewer_can_do_none_of_the_mutations(live_server, page, as_user, graph, vectors, hostile):  # noqa: F811
    """Issue 11's acceptance: a viewer in the browser sees no action on any page, and every
    mutation URL (found in the URLconf, so pages added later are covered) refuses a forged POST
    carrying a valid CSRF token; so does every API action with the viewer's own token."""
    from dashboard import tokens
    from sync.models import Conflict, ReconcileRun, SyncEvent
    from sync.observe.models import Alert
    from tests.test_pages import API, GETS, POSTS, url_for

    viewer = as_user(make_user("vic", "viewer"))
    token = tokens.create(viewer, "viewer script")[1]

    def state():
        return (list(SyncEvent.objects.values_list("id", "status")), list(ReconcileRun.objects.values_list("id", "status")),
                list(Conflict.objects.values_list("id", "status")), list(Alert.objects.values_list("id", "acknowledged_at")),
                AuditEntry.objects.exclude(action="access.denied").count())

    before = state()
    for name in GETS:
        if name.endswith("export"):
            continue  # a download, not a page
        response = page.goto(live_server.url + url_for(name, hostile))
        if response.status == 200 and response.headers.get("content-type", "").startswith("text/html"):
            forms = page.locator("form[method=post]:not(.logout)")
            assert forms.count() == 0, f"{name} offers a viewer {forms.count()} action(s)"
    page.goto(live_server.url + "/")
    csrf = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken']")
    refused = []
    for name, view in POSTS:
        if view.access.role == "viewer":
            continue
        status = page.evaluate(
            """async ([url, token]) => (await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token,
                 'Content-Type': 'application/x-www-form-urlencoded'},
                 body: 'scope=all&mode=full&kind=stale_vector&note=x&as_of=2100-01-01T00:00:00%2B00:00'})).status""",
            [url_for(name, hostile), csrf])
        assert status == 403, name
        refused.append(name)
    for name, view in API:
        if "POST" not in view.api_access.methods:
            continue
        from tests.test_api_actions import url_for as api_url

        status = page.evaluate(
            """async ([url, token]) => (await fetch(url, {method: 'POST', headers: {'Authorization': 'Bearer ' + token,
                 'Content-Type': 'application/json'}, body: '{"all": true, "mode": "full", "note": "x"}'})).status""",
            [api_url(name, {"alert": hostile["alert"], "conflict": Conflict.objects.first(), "event": hostile["event"]}),
             token])
        assert status == 403, name
        refused.append(name)
    assert {"queue-dead-act", "reconciliation-start", "alert-acknowledge", "api-resync"} <= set(refused)
    assert state() == before
    assert AuditEntry.objects.filter(action="access.denied", actor=viewer).count() == len(refused)
