"""The Reconciliation page: runs with their counts, one run's findings, starting runs, progress."""

from datetime import timedelta

import pytest
from django.utils import timezone

from sync.models import AuditEntry, ReconcileRun, SyncEvent

pytestmark = pytest.mark.django_db


def finished_run(**fields):
    defaults = dict(mode="full", status=ReconcileRun.Status.SUCCEEDED, trigger="schedule", duration=12.5,
                    finished_at=timezone.now(), entities_checked=200, vectors_checked=210,
                    drift={"stale_vector": 3, "orphan_vector": 1}, repaired={"stale_vector": 3, "orphan_vector": 1},
                    labels={"ThreatActor": {"checked": 150, "drift": 3}, "KEV": {"checked": 50, "drift": 0}},
                    samples=[{"kind": "stale_vector", "label": "ThreatActor", "uid": f"apt{i}",
                              "detail": f"vector v1 < graph v{i + 2}"} for i in range(3)]
                    + [{"kind": "orphan_vector", "label": "Malware", "uid": "gone", "detail": "no such entity"}])
    return ReconcileRun.objects.create(**{**defaults, **fields})


def test_runs_show_mode_trigger_who_duration_drift_and_match(client, viewer, analyst_user):
    finished_run(triggered_by=analyst_user, trigger="ui", dry_run=True)
    client.force_login(viewer)
    html = client.get("/reconciliation/").content.decode()
    for expected in ("dry run", "ui", analyst_user.username, "12.5 s", "3 stale, 1 orphan", "KEV 100.0 %",
                     "ThreatActor 98.0 %"):
        assert expected in html, expected
    assert "Start reconciliation" not in html  # a viewer has no action


def test_a_run_shows_findings_per_kind_and_resyncs_them(client, analyst_user, graph):
    run = finished_run()
    client.force_login(analyst_user)
    html = client.get(f"/reconciliation/{run.pk}/").content.decode()
    assert "ThreatActor:apt2" in html and "vector v1 &lt; graph v4" in html
    assert "Resync these 3" in html and html.count("Resync these") == 1  # orphans cannot be resynced
    assert 'id="run-live" data-live' not in html  # a finished run is not polled
    client.post(f"/reconciliation/{run.pk}/resync", {"kind": "stale_vector"})
    queued = SyncEvent.objects.filter(status="queued", source="resync")
    assert sorted(queued.values_list("uid", flat=True)) == ["apt0", "apt1", "apt2"]
    assert AuditEntry.objects.filter(action="resync", actor=analyst_user).count() == 3
    response = client.post(f"/reconciliation/{run.pk}/resync", {"kind": "orphan_vector"}, follow=True)
    assert "Nothing queued: orphan_vector findings cannot be resynced" in response.content.decode()


def test_a_run_says_what_it_left_to_changes_on_their_way(client, viewer):
    quiet = finished_run()
    busy = finished_run(in_flight={"stale_vector": 4, "missing_vector": 2})
    client.force_login(viewer)
    assert 'id="in-flight"' not in client.get(f"/reconciliation/{quiet.pk}/").content.decode()
    html = client.get(f"/reconciliation/{busy.pk}/").content.decode()
    assert "Not counted as drift: 2 missing_vector, 4 stale_vector" in html


def test_an_analyst_starts_a_dry_run_once_at_a_time_and_not_too_often(client, analyst_user, settings):
    settings.RECONCILE_START_INTERVAL = 60
    client.force_login(analyst_user)
    response = client.post("/reconciliation/start", {"mode": "full", "dry_run": "on"})
    run = ReconcileRun.objects.get()
    assert response["Location"] == f"/reconciliation/{run.pk}/"
    assert (run.status, run.dry_run, run.trigger, run.triggered_by) == ("queued", True, "ui", analyst_user)
    assert AuditEntry.objects.get(action="reconcile.start").after == {"mode": "full", "dry_run": True, "trigger": "ui"}
    page = client.get(response["Location"]).content.decode()
    assert "Waiting for a worker to start it" in page and 'id="run-live" data-live' in page
    again = client.post("/reconciliation/start", {"mode": "incremental"}, follow=True).content.decode()
    assert f"reconciliation #{run.pk} (full) is queued" in again
    ReconcileRun.objects.filter(pk=run.pk).update(status="succeeded", finished_at=timezone.now())
    soon = client.post("/reconciliation/start", {"mode": "incremental"}, follow=True).content.decode()
    assert "less than 60 s ago" in soon and ReconcileRun.objects.count() == 1
    ReconcileRun.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(seconds=61))
    client.post("/reconciliation/start", {"mode": "incremental"})
    assert ReconcileRun.objects.count() == 2
    assert client.post("/reconciliation/start", {"mode": "sideways"}).status_code == 400


def test_progress_polls_until_the_run_ends(client, viewer):
    run = finished_run(status=ReconcileRun.Status.RUNNING, finished_at=None, progress_done=40, progress_total=200,
                       drift={}, samples=[])
    client.force_login(viewer)
    first = client.get(f"/reconciliation/{run.pk}/")
    version = first.context["version"]
    assert "Checked <strong id=\"progress-done\">40</strong> of about 200" in first.content.decode()
    assert client.get(f"/reconciliation/{run.pk}/progress", {"v": version}).status_code == 204
    ReconcileRun.objects.filter(pk=run.pk).update(progress_done=120)
    moved = client.get(f"/reconciliation/{run.pk}/progress", {"v": version})
    assert moved.status_code == 200 and ">120<" in moved.content.decode() and 'id="run-live" data-live' in moved.content.decode()
    assert len(moved.content) < 5000
    ReconcileRun.objects.filter(pk=run.pk).update(status="succeeded", finished_at=timezone.now())
    done = client.get(f"/reconciliation/{run.pk}/progress", {"v": version}).content.decode()
    assert 'id="run-live" data-live' not in done and "Drift by kind" in done


def test_a_real_run_records_its_match_per_label(synced_graph, vectors):
    from sync.reconcile import reconciler as reconcile

    synced_graph.import_entities("ThreatActor", [
        {"uid": f"actor-{n}", "name": f"Actor {n}", "description": "Spear-phishing against energy firms."}
        for n in range(4)], source="test")
    run = reconcile.full(dry_run=True)  # nothing was embedded: every actor lacks its vector
    assert run.labels["ThreatActor"] == {"checked": 4, "drift": 4}
    assert run.match_scores()["ThreatActor"] == 0.0


def test_the_pager_links_reach_the_next_page_keeping_the_filter(client, viewer):
    for _ in range(60):
        finished_run()
    client.force_login(viewer)
    html = client.get("/reconciliation/", {"mode": "full"}).content.decode()
    assert 'href="?mode=full&amp;page=2"' in html and "??" not in html
    assert client.get("/reconciliation/", {"mode": "full", "page": 2}).context["page"].number == 2
