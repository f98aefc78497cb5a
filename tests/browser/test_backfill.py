"""A new user's first screen in real Chromium, light and dark: the initial sync's progress ("initial
sync: n of N, about m minutes left"), no critical alert, and the numbers moving without a reload."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from sync import backfill, queue
from sync.models import Backfill, ChangeCursor, Priority, SyncEvent
from sync.observe import alerting, observer, readings
from tests.browser.conftest import check
from tests.conftest import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
LABELS = (("KEV", Priority.HIGH, 120), ("ThreatActor", Priority.MEDIUM, 860), ("Artifact", Priority.LOW, 670))


def applied(n: int, ago: float) -> None:
    batch = queue.claim_batch("browser-worker", n, starvation_seconds=10**6)
    queue.ack(batch, "upserted", {e.id: 150.0 for e in batch})
    SyncEvent.objects.filter(id__in=[e.id for e in batch]).update(finished_at=timezone.now() - timedelta(seconds=ago))


def test_the_first_screen_shows_the_initial_sync_in_both_themes(live_server, page, as_user, graph, vectors):
    """The state of a first start ten minutes in, as `load_demo --if-empty` leaves it (its own
    test, tests/test_backfill.py, loads the real demo): 1,650 entities handed to the initial sync."""
    ChangeCursor.objects.create(name="neo4j", polled_at=timezone.now())  # change capture polls, as it does
    observer.tick("browser-test")  # the observer's heartbeat and service pings; its alert rules judged
    load = backfill.start(Backfill.Kind.INITIAL_SYNC, scope="the demo graph", actor="load_demo",
                          reason="first start: the demo graph was loaded into an empty Neo4j", total=1650)
    with backfill.tracking(load):
        for label, priority, n in LABELS:
            queue.enqueue_many([queue.Work(label, f"{label.lower()}-{k}", version=1, priority=priority,
                                           source="backfill") for k in range(n)])
    Backfill.objects.filter(pk=load.pk).update(started_at=timezone.now() - timedelta(minutes=10))
    applied(240, ago=60)  # 240 in the last 5 minutes: 0.8 a second, 1,410 to go
    alerting.evaluate(readings.read(observer_alive=True), None)

    as_user(make_user("nora-new", "viewer"))
    page.goto(live_server.url + "/")
    panel = page.locator(f"#backfill-{load.pk}")
    expect(panel.get_by_role("heading")).to_have_text("Initial sync: 240 of 1,650 entities, about 30 minutes left")
    expect(panel).to_contain_text("syncing")
    expect(panel.locator("progress")).to_have_attribute("value", "240")
    expect(page.locator("#backfill-lag")).to_contain_text("Backfill lag over the last 5 min: p50 2 min · p95 2 min")
    expect(page.locator("#card-lag-high")).to_contain_text("met")
    expect(page.locator(".alert-critical")).to_have_count(0)
    check(page, "overview-initial-sync")

    page.evaluate("document.body.dataset.loadedOnce = 'yes'")  # gone if the page reloads
    applied(360, ago=5)
    expect(panel.get_by_role("heading")).to_contain_text("Initial sync: 600 of 1,650 entities", timeout=30_000)
    assert page.evaluate("document.body.dataset.loadedOnce") == "yes"

    page.goto(live_server.url + "/queue/")
    expect(page.locator(f"#backfill-{load.pk}")).to_contain_text("Initial sync: 600 of 1,650 entities")
    expect(page.locator("#backfill-depth")).to_have_text("1050")
    check(page, "queue-initial-sync", dark=False)
