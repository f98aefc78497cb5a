"""The overview and alerts in real Chromium: live numbers that move without a reload, polls that
swap nothing, the range picker redrawing every chart, and an alert that a real lag breach opens,
shown as a banner on every page, acknowledged, and resolved by itself."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from sync import capture, queue, worker
from sync.models import Priority, ReconcileRun
from sync.observe import observer, samples
from sync.observe.models import Alert
from tests.browser.conftest import check
from tests.conftest import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
NO_COUNTERS = {"errors": {}, "embedded": 0, "applied": {}}
PAGES = ["/", "/queue/", "/reconciliation/", "/alerts/"]


@pytest.fixture
def observed(graph, vectors, settings):
    """An observer that has run for two minutes: a heartbeat with its service pings, samples to draw,
    and a reconciliation that finished a few seconds ago (its age is on a card)."""
    settings.SAMPLE_INTERVAL = 15
    observer.tick("browser-test")
    now = timezone.now()
    for n in range(8, 0, -1):
        samples.record(now - timedelta(seconds=15 * n), totals=NO_COUNTERS)
    ReconcileRun.objects.create(mode="incremental", status="succeeded", drift={"missing_vector": 2},
                                started_at=now - timedelta(seconds=20), finished_at=now - timedelta(seconds=10))


def test_queue_depth_moves_without_a_reload(live_server, page, as_user, observed):
    as_user(make_user("vera", "viewer"))
    page.goto(live_server.url + "/")
    depth = page.locator("#card-depth")
    expect(depth.locator(".v b")).to_have_text("0")
    page.evaluate("document.body.dataset.loadedOnce = 'yes'")  # gone if the page reloads
    queue.enqueue_many([queue.Work("ThreatActor", f"apt-{n}", priority=Priority.MEDIUM) for n in range(7)])
    expect(depth.locator(".v b")).to_have_text("7", timeout=30_000)
    expect(depth).to_contain_text("MEDIUM 7")
    assert page.evaluate("document.body.dataset.loadedOnce") == "yes"


def test_a_poll_that_finds_nothing_changed_swaps_nothing(live_server, page, as_user, observed):
    as_user(make_user("vera", "viewer"))
    page.goto(live_server.url + "/")
    expect(page.locator("#card-depth")).to_be_visible()
    page.evaluate("document.querySelector('#live').dataset.marker = 'first'")
    for _ in range(2):  # two polls, well past the reconciliation's age of a few seconds turning over
        with page.expect_response(lambda r: "/overview/live" in r.url, timeout=30_000) as polled:
            pass
        assert polled.value.status == 204 and polled.value.body() == b""
    assert page.evaluate("document.querySelector('#live').dataset.marker") == "first"  # the same element


def test_the_range_picker_redraws_every_chart(live_server, page, as_user, observed):
    as_user(make_user("vera", "viewer"))
    page.goto(live_server.url + "/")
    plots = page.locator("[data-figure]")
    expect(plots).to_have_count(5)
    for n in range(5):
        expect(plots.nth(n)).to_have_attribute("data-drawn-range", "1h")
        expect(plots.nth(n).locator(".main-svg").first).to_be_visible()
    # Plotly's own layout rules applied (its style element is allowed by hash): the layers of a
    # chart overlap rather than stack below one another.
    assert page.evaluate("getComputedStyle(document.querySelector('[data-figure] .main-svg')).position") == "absolute"
    # From here on only htmx swaps: none may need what the CSP refuses (on each page load Plotly
    # also tries to inject the CSS of its map traces, refused: there are no maps).
    refused = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.get_by_role("navigation", name="Time range").get_by_role("link", name="6h").click()
    expect(page).to_have_url(f"{live_server.url}/?range=6h")
    for n in range(5):
        expect(plots.nth(n)).to_have_attribute("data-drawn-range", "6h")
        expect(plots.nth(n).locator(".main-svg").first).to_be_visible()
    expect(page.get_by_role("link", name="6h")).to_have_attribute("aria-current", "true")
    page.go_back()  # the previous range comes back
    expect(page).to_have_url(f"{live_server.url}/")
    for n in range(5):
        expect(plots.nth(n)).to_have_attribute("data-drawn-range", "1h")
        expect(plots.nth(n).locator(".main-svg").first).to_be_visible()
    assert refused == [], refused
    page.goto(f"{live_server.url}/?range=30d")  # a copied URL reproduces the view
    for n in range(5):
        expect(plots.nth(n)).to_have_attribute("data-drawn-range", "30d")
    page.emulate_media(color_scheme="dark")  # the charts follow the theme without a reload
    expect(plots.first.locator(".gtitle")).to_have_css("fill", "rgb(230, 237, 243)")  # dark --fg, #e6edf3
    page.emulate_media(color_scheme="light")
    expect(plots.first.locator(".gtitle")).to_have_css("fill", "rgb(27, 31, 36)")  # light --fg, #1b1f24
    check(page, "overview-30d")


def test_an_alert_opened_by_a_real_lag_breach_shows_as_a_banner_and_resolves_by_itself(
        live_server, page, as_user, synced_graph, vectors, settings):
    settings.ALERT_LAG_SECONDS, settings.FRESHNESS_WINDOW, settings.ALERT_RESOLVE_AFTER = 1.0, 4.0, 0.0
    settings.ALERT_WEBHOOK_URL, settings.ALERT_EMAIL_TO = "", []
    synced_graph.driver.execute_query(
        "CREATE (:ThreatActor {uid: 'slow-1', name: 'Slow', description: 'Waits before it syncs.'})",
        database_=synced_graph.database)
    time.sleep(2.5)  # the change waits: its change-to-vector lag will be above the 1 s threshold
    assert capture.poll_once("browser-test", overlap=0).enqueued == 1
    worker.drain(idle_exit=0)
    assert "lag" in observer.tick("browser-test").opened
    as_user(make_user("ana", "analyst"))
    for path in PAGES:  # the banner is on every page
        page.goto(live_server.url + path)
        expect(page.locator("#alert-banner [data-rule='lag']")).to_contain_text("Lag p95 over the last 4.0 s is")
    check(page, "alerts-open")
    banner = page.locator("#alert-banner [data-rule='lag']")
    page.locator("tr", has_text="Sync lag above threshold").get_by_role("button", name="Acknowledge").click()
    expect(page.get_by_role("status")).to_contain_text("Acknowledged alert")
    expect(banner).to_contain_text("acknowledged by ana")
    check(page, "alerts-acknowledged")
    page.goto(live_server.url + "/")
    expect(banner).to_be_visible()
    time.sleep(settings.FRESHNESS_WINDOW + 0.5)  # the slow sync leaves the window
    assert "lag" in observer.tick("browser-test").resolved
    expect(banner).to_have_count(0, timeout=30_000)  # the banner's own poll, no reload
    alert = Alert.objects.get(rule="lag")
    assert (alert.status, alert.acknowledged_by.username) == ("resolved", "ana")
    page.goto(live_server.url + "/alerts/?status=resolved")
    expect(page.locator(f"#alert-{alert.pk}")).to_contain_text("resolved")


def test_text_from_the_data_is_shown_in_the_charts_as_text(live_server, page, as_user, graph, vectors, settings):
    """Plotly reads markup in labels: an error kind or a resync target with tags must be shown as
    the characters they are, never become an element (a link, an image) or vanish."""
    from sync.models import AuditEntry

    hostile = '<a href="https://evil.example/">x</a><img src=x onerror=alert(1)>'
    settings.SAMPLE_INTERVAL = 15
    now = timezone.now()
    for n in range(6, 0, -1):
        samples.record(now - timedelta(seconds=15 * n), totals={"errors": {hostile: 3 * (7 - n)}, "embedded": 0,
                                                                  "applied": {}})
    AuditEntry.record("system", "resync", f"ThreatActor:{hostile}")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    as_user(make_user("vera", "viewer"))
    page.goto(live_server.url + "/")
    errors = page.locator("[data-figure=errors]")
    expect(errors.locator(".legendtext", has_text="error:")).to_have_text(f"error: {hostile}")
    expect(page.locator("[data-figure] a, [data-figure] img")).to_have_count(0)
    figures = page.evaluate("JSON.parse(document.getElementById('figures-data').textContent)")
    markers = [t for t in figures["lag"]["data"] if t["name"] == "resync started"]
    assert markers and "&lt;img" in markers[0]["text"][0]
    assert dialogs == []
