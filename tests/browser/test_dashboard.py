"""The dashboard in real headless Chromium: logging in, every page through axe-core with a
screenshot, retrying a dead-letter group while a real worker drains the queue, watching a dry-run
reconciliation that a real task cluster runs, and a viewer who can act on nothing."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from sync import capture
from sync.models import AuditEntry, ReconcileRun, SyncEvent
from sync.observe.models import Alert
from tests.browser.conftest import PASSWORD, check, worker
from tests.conftest import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
HOSTILE = "<img src=x onerror=alert(1)>"


def actors(graph, count, prefix="actor"):
    graph.import_entities("ThreatActor", [
        {"uid": f"{prefix}-{n:03d}", "name": f"Actor {n}",
         "description": f"Intrusion set {n} targeting energy firms with spear-phishing."} for n in range(count)],
        source="test")


def stop(process, timeout=20):
    process.terminate()
    try:
        process.wait(timeout)
    except Exception:  # noqa: BLE001 — a worker that ignores SIGTERM is killed
        process.kill()
        process.wait()


def test_log_in_with_the_form(live_server, page, db):
    make_user("lena", "analyst")
    page.goto(live_server.url + "/queue/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/queue/"))
    check(page, "login")
    page.get_by_label("Username").fill("lena")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(live_server.url + "/queue/")
    nav = page.get_by_role("navigation", name="Pages")
    for title in ("Overview", "Queue", "Reconciliation", "Alerts"):
        expect(nav.get_by_role("link", name=re.compile(f"^{title}"))).to_be_visible()
    expect(nav.get_by_role("link", name=re.compile("^Queue"))).to_have_attribute("aria-current", "page")


def test_every_page_passes_axe_and_is_screenshotted(live_server, page, as_user, graph, vectors):
    admin = as_user(make_user("ada", "admin"))
    now = timezone.now()
    for n in range(3):
        SyncEvent.objects.create(label="ThreatActor", uid=f"apt{n}{HOSTILE}", status="dead", attempts=8,
                                 finished_at=now, last_error=f"PermanentStoreError: vector ThreatActor:apt{n}#0 "
                                                             f"has 383 dimensions, expected 384 {HOSTILE}")
    SyncEvent.objects.create(label="KEV", uid="CVE-2024-0001", priority=0)
    run = ReconcileRun.objects.create(
        mode="full", status="succeeded", trigger="ui", triggered_by=admin, finished_at=now, duration=4.2,
        drift={"stale_vector": 2}, repaired={"stale_vector": 2}, labels={"ThreatActor": {"checked": 40, "drift": 2}},
        samples=[{"kind": "stale_vector", "label": "ThreatActor", "uid": f"apt{HOSTILE}", "detail": "vector v1 < graph v3"}])
    Alert.objects.create(rule="dead_letters", severity="warning", summary=f"3 dead letters are waiting {HOSTILE}")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    # Scripts must never need more than 'self'. (Plotly tries to inject a <style> for its mode bar,
    # which the policy refuses; Plotly then goes on without those rules.)
    violations = []
    page.on("console", lambda m: violations.append(m.text)
            if "Content Security Policy" in m.text and "script-src" in m.text else None)
    for name, path in [("overview", "/"), ("queue", "/queue/"), ("reconciliation", "/reconciliation/"),
                       ("reconciliation-run", f"/reconciliation/{run.pk}/"), ("alerts", "/alerts/")]:
        page.goto(live_server.url + path)
        check(page, name)
    page.goto(live_server.url + "/queue/")
    page.get_by_role("link", name="3 dead letters of this group").click()
    expect(page.get_by_role("heading", name="Dead letters of ThreatActor")).to_be_visible()
    check(page, "queue-dead-letters")
    page.get_by_role("checkbox").first.check()
    page.get_by_role("button", name="Retry selected").click()
    expect(page.get_by_role("heading", name="Retry 1 dead letter?")).to_be_visible()
    check(page, "queue-confirm")
    assert dialogs == [], "hostile text ran as script"
    assert violations == [], violations


def test_retry_a_dead_letter_group_and_see_the_queue_drain(live_server, page, as_user, synced_graph, vectors,
                                                           tmp_path):
    actors(synced_graph, 6)
    assert capture.poll_once("test", overlap=0).enqueued == 6
    SyncEvent.objects.filter(status="queued").update(
        status="dead", attempts=8, finished_at=timezone.now(),
        last_error="ServiceUnavailable: the vector store at 127.0.0.1:9 refused the connection")
    as_user(make_user("ana", "analyst"))
    page.goto(live_server.url + "/queue/")
    expect(page.locator("#dead-letter-count")).to_have_text("6")
    row = page.locator("#dead-letter-groups tbody tr")
    expect(row).to_have_count(1)
    row.get_by_role("link", name="Retry group").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Retry 6 dead letters from ThreatActor"))).to_be_visible()
    page.get_by_role("button", name="Retry 6 dead letters").click()
    expect(page.get_by_role("status")).to_contain_text("Retried 6 dead letters")
    expect(page.locator("#queue-depth")).to_have_text("6")
    expect(page.locator("#dead-letter-count")).to_have_text("0")
    drain = worker("drain", "--until-empty", tmp_path=tmp_path, lancedb=vectors.directory)
    try:
        # The live region polls every 5 s: the depth falls to 0 without a reload.
        expect(page.locator("#queue-depth")).to_have_text("0", timeout=120_000)
    finally:
        stop(drain)
    assert SyncEvent.objects.filter(status="done", source="retry").count() == 6
    assert AuditEntry.objects.filter(action="dead_letter.retry").count() == 6


def test_start_a_dry_run_reconciliation_and_watch_it_finish(live_server, page, as_user, synced_graph, vectors,
                                                            tmp_path, settings):
    actors(synced_graph, 5)
    as_user(make_user("rita", "analyst"))
    page.goto(live_server.url + "/reconciliation/")
    expect(page.get_by_text("No reconciliation has run yet")).to_be_visible()
    page.get_by_label("Mode", exact=True).select_option("full")
    page.get_by_label(re.compile("dry run")).check()
    page.get_by_role("button", name="Start reconciliation").click()
    expect(page.get_by_role("heading", name=re.compile(r"Full reconciliation #\d+ \(dry run\)"))).to_be_visible()
    expect(page.get_by_text("Waiting for a worker to start it")).to_be_visible()
    cluster = worker("qcluster", tmp_path=tmp_path, lancedb=vectors.directory, Q_WORKERS="3")
    try:
        expect(page.locator("#run-live")).to_have_attribute("data-status", "succeeded", timeout=120_000)
    finally:
        stop(cluster)
    expect(page.get_by_role("heading", name="Drift by kind")).to_be_visible()
    expect(page.locator("#drift-total")).to_have_text("5")  # no actor was embedded: 5 missing vectors
    expect(page.get_by_role("cell", name="none (dry run); would resync").first).to_be_visible()
    run = ReconcileRun.objects.get()
    assert (run.dry_run, run.trigger, run.triggered_by.username) == (True, "ui", "rita")
    assert not SyncEvent.objects.exists()  # a dry run repairs nothing


def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(live_server, page, as_user, db):
    viewer = as_user(make_user("vic", "viewer"))
    SyncEvent.objects.create(label="Report", uid="r1", status="dead", attempts=8, finished_at=timezone.now(),
                             last_error="boom")
    page.goto(live_server.url + "/queue/")
    expect(page.locator("#dead-letter-groups")).to_be_visible()
    for name in ("Retry group", "Discard group", re.compile("^Retry all"), re.compile("^Discard all")):
        expect(page.get_by_role("link", name=name)).to_have_count(0)
    page.goto(live_server.url + "/reconciliation/")
    expect(page.get_by_role("button", name="Start reconciliation")).to_have_count(0)
    token = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken']")
    status = page.evaluate(
        """async (token) => (await fetch('/queue/dead/retry', {method: 'POST', headers: {'X-CSRFToken': token,
             'Content-Type': 'application/x-www-form-urlencoded'}, body: 'scope=all&as_of=2100-01-01T00:00:00%2B00:00'})).status""",
        token)
    assert status == 403
    assert SyncEvent.objects.get(uid="r1").status == "dead"
    assert AuditEntry.objects.filter(action="access.denied", actor=viewer, target="/queue/dead/retry").exists()
