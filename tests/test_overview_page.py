"""The overview page, its live poll and its charts (Django test client; the browser tests drive it in Chromium)."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sync.models import AuditEntry, Priority, ReconcileRun
from sync.observe import samples
from sync.observe.models import Heartbeat, MetricSample
from tests.observe_helpers import finished, waiting

pytestmark = pytest.mark.django_db
NO_COUNTERS = {"errors": {}, "embedded": 0, "applied": {}}


@pytest.fixture
def viewer(db):
    user = User.objects.create_user("vera", password="pw-for-tests-only")
    Group.objects.get_or_create(name="viewer")[0].user_set.add(user)
    return user


@pytest.fixture
def logged_in(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def observed(neo4j_driver, vectors):
    """What a running observer leaves: a fresh heartbeat with its pings, a few samples."""
    from sync.observe import health

    Heartbeat.beat("observer", "test", services=health.as_dicts(health.check_services()))
    now = timezone.now()
    for n in range(5, 0, -1):
        samples.record(now - timedelta(seconds=15 * n), totals=NO_COUNTERS)


def test_anonymous_users_are_sent_to_log_in(client, db):
    for url in ("/", "/overview/live", "/overview/charts"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_post_is_refused(logged_in):
    for url in ("/", "/overview/live", "/overview/charts"):
        assert logged_in.post(url).status_code == 405


def test_the_cards_say_whether_each_freshness_target_is_met(logged_in, observed, settings):
    settings.FRESHNESS_TARGETS = {"high": 60.0, "medium": 900.0, "low": 86400.0}
    finished(3.0, priority=Priority.HIGH)
    waiting(priority=Priority.MEDIUM, age=2000)
    page = logged_in.get("/").content.decode()
    assert 'id="card-lag-high"' in page and "target 60 s: met" in page
    assert "target 15 min: breached" in page  # MEDIUM: a change has waited 33 minutes
    assert "the oldest waiting change is 33 min old" in page
    for title in ("Queue depth", "Dead letters", "Open conflicts", "Drift found", "Error rate", "Throughput",
                  "Oldest unsynced change"):
        assert title in page
    assert "Neo4j 5.26" in page and "LanceDB" in page


def test_the_drift_card_names_the_last_reconciliation(logged_in, observed):
    run = ReconcileRun.objects.create(mode="incremental", status="succeeded", drift={"missing_vector": 2,
                                                                                     "stale_vector": 1},
                                      started_at=timezone.now() - timedelta(minutes=3), finished_at=timezone.now())
    page = logged_in.get("/").content.decode()
    assert f"incremental #{run.pk}, finished under a minute ago" in page and "2 missing vector, 1 stale vector" in page
    run.finished_at = timezone.now() - timedelta(seconds=150)  # to the minute: an idle poll gets 204
    run.save()
    assert f"incremental #{run.pk}, finished 2 min ago" in logged_in.get("/").content.decode()


def test_a_live_poll_that_finds_nothing_changed_sends_nothing(logged_in, observed):
    first = logged_in.get("/overview/live", HTTP_HX_REQUEST="true")
    assert first.status_code == 200
    version = first.content.decode().split("?v=")[1].split('"')[0]
    again = logged_in.get(f"/overview/live?v={version}", HTTP_HX_REQUEST="true")
    assert again.status_code == 204 and again.content == b""
    waiting(priority=Priority.LOW)  # the queue moved
    moved = logged_in.get(f"/overview/live?v={version}", HTTP_HX_REQUEST="true")
    assert moved.status_code == 200 and "LOW 1" in moved.content.decode()


def test_the_live_poll_is_small_and_its_query_count_does_not_grow_with_the_data(logged_in, observed):
    logged_in.get("/overview/live")
    with CaptureQueriesContext(connection) as few:
        small = logged_in.get("/overview/live")
    for n in range(200):
        waiting(priority=n % 3, age=n)
        finished(float(n), priority=n % 3)
    with CaptureQueriesContext(connection) as many:
        large = logged_in.get("/overview/live")
    assert len(many) == len(few)
    assert len(small.content) <= 5 * 1024 and len(large.content) <= 5 * 1024


def test_the_charts_come_as_json_for_the_static_script(logged_in, observed):
    ReconcileRun.objects.create(mode="full", status="succeeded", started_at=timezone.now() - timedelta(seconds=30))
    page = logged_in.get("/?range=1h").content.decode()
    opening = '<script id="figures-data" type="application/json">'
    assert "<script>" not in page and opening in page  # no inline script: data only
    data = json.loads(page.split(opening)[1].split("</script>")[0])
    assert list(data) == ["lag", "depth", "throughput", "errors", "drift"]
    depth = data["depth"]
    assert [t["name"] for t in depth["data"][:3]] == ["HIGH", "MEDIUM", "LOW"]
    assert depth["data"][0]["line"]["color"] == data["lag"]["data"][0]["line"]["color"]  # one colour per priority
    assert depth["layout"]["yaxis"]["title"]["text"] == "events"
    markers = [t for t in data["lag"]["data"] if t["name"] == "reconciliation started"]
    assert markers and "full reconciliation" in markers[0]["text"][0]
    assert 'src="/static/plotly/plotly.min.js"' in page


def test_the_range_picker_lives_in_the_query_string(logged_in, observed):
    MetricSample.objects.create(resolution="1h", at=timezone.now() - timedelta(days=3), seconds=3600,
                                data=MetricSample.objects.filter(resolution="raw").first().data)
    page = logged_in.get("/?range=7d").content.decode()
    assert 'href="?range=7d" hx-get="/overview/charts?range=7d"' in page and 'aria-current="true">7d' in page
    assert "in hourly rollups" in page and "1 sample from" in page
    chart = logged_in.get("/overview/charts?range=6h", HTTP_HX_REQUEST="true")
    assert chart.status_code == 200 and 'data-range="6h"' in chart.content.decode()
    version = chart.content.decode().split("&amp;v=")[1].split('"')[0]
    assert logged_in.get(f"/overview/charts?range=6h&v={version}").status_code == 204  # no new sample


def test_text_from_the_graph_is_escaped(logged_in, observed):
    hostile = "<img src=x onerror=alert(1)>"
    ReconcileRun.objects.create(mode="full", status="failed", error=hostile, drift={hostile: 1},
                                started_at=timezone.now() - timedelta(minutes=1), finished_at=timezone.now())
    samples.record(timezone.now() + timedelta(seconds=15), totals=NO_COUNTERS)
    AuditEntry.record("system", "resync", f"ThreatActor:{hostile}")
    page = logged_in.get("/").content.decode()
    assert hostile not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # In the figures too, escaped for Plotly (which reads tags in labels as markup).
    data = json.loads(page.split('<script id="figures-data" type="application/json">')[1].split("</script>")[0])
    marker = next(t for t in data["lag"]["data"] if t["name"] == "resync started")
    assert marker["text"] == ["resync of ThreatActor:&lt;img src=x onerror=alert(1)&gt; by system"]


def test_a_lone_value_is_drawn_as_a_dot(logged_in, observed):
    """Nothing synced in an interval leaves a gap in the lag line; a value between two gaps, or the
    one rollup a long range has after a fresh start, would be invisible as a line alone."""
    page = logged_in.get("/?range=1h").content.decode()
    data = json.loads(page.split('<script id="figures-data" type="application/json">')[1].split("</script>")[0])
    assert {t["mode"] for t in data["lag"]["data"] if t["name"].endswith(("p95", "p50"))} == {"lines+markers"}
    assert {t["mode"] for t in data["depth"]["data"] if t["name"] in ("HIGH", "MEDIUM", "LOW")} == {"lines+markers"}
    now = timezone.now()
    for n in range(100):  # an hour of samples: lines only, no clutter of dots
        samples.record(now - timedelta(seconds=15 * (n + 6)), totals=NO_COUNTERS)
    page = logged_in.get("/?range=1h").content.decode()
    data = json.loads(page.split('<script id="figures-data" type="application/json">')[1].split("</script>")[0])
    assert {t["mode"] for t in data["depth"]["data"] if t["name"] in ("HIGH", "MEDIUM", "LOW")} == {"lines"}


def test_empty_charts_say_why(logged_in):
    """With no sample in the range, the charts say so, and not that no reconciliation finished or
    nothing failed (the samples are what would show it)."""
    ReconcileRun.objects.create(mode="full", status="succeeded", drift={"stale_vector": 2},
                                started_at=timezone.now() - timedelta(seconds=30), finished_at=timezone.now())
    page = logged_in.get("/overview/charts?range=1h").content.decode()
    data = json.loads(page.split('<script id="figures-data" type="application/json">')[1].split("</script>")[0])
    assert [a["text"] for a in data["drift"]["layout"]["annotations"]] == ["No samples in this range yet"]
    assert [a["text"] for a in data["errors"]["layout"]["annotations"]] == ["No samples in this range yet"]
    assert "No samples in this range yet" in page
