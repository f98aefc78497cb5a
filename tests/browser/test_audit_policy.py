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

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
HOSTILE = "<img src=x onerror=alert(1)>"


def test_filter_page_and_export_the_audit_log(live_server, page, as_user):
    as_user(make_user("vic", "viewer"))
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
    expect(page).to_have_url(re.compile(r"action=conflict.resolve"))
    expect(page.locator("#audit-count")).to_contain_text("65 entries match this filter")
    rows = page.locator("#audit tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("ThreatActor:apt1<img")  # shown as text, never run
    page.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(15)
    expect(rows.last).to_contain_text("apt129")
    page.get_by_role("link", name="← Newer").click()
    expect(rows).to_have_count(50)
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
