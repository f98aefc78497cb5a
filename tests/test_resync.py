"""Resync of one entity, a label or everything: preview, confirmation scaled to the count,
lanes (LOW by default, HIGH never for many), per-user rate limit, audit, background runs and the
progress the overview shows."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django_q.models import OrmQ

from sync import backfill, queue, resync, tasks, worker
from sync.models import AuditEntry, Backfill, Priority, SyncEvent, SyncRecord

pytestmark = pytest.mark.django_db(transaction=True)


def actors(graph, count, prefix="actor"):
    graph.import_entities("ThreatActor", [{"uid": f"{prefix}-{n:03d}", "name": f"Actor {n}",
                                           "description": f"Intrusion set {n}."} for n in range(count)], source="t")


def test_the_preview_counts_what_needs_embedding(graph, db):
    actors(graph, 5)
    SyncRecord.objects.create(label="ThreatActor", uid="actor-000", graph_version=1, vector_version=1,
                              content_hash="a" * 64, status="in_sync")
    SyncRecord.objects.create(label="ThreatActor", uid="actor-001", graph_version=2, vector_version=1,
                              content_hash="a" * 64, status="pending")
    shown = resync.preview(resync.Scope(resync.LABEL, "ThreatActor"))
    # 3 never recorded + 1 whose graph moved on; 1 metadata-only.
    assert (shown.entities, shown.embed, shown.metadata_only) == (5, 4, 1)
    assert shown.default_priority == "low" and "high" in shown.priorities
    assert shown.rate is None and shown.seconds is None  # nothing measured yet: said so, not guessed


def test_the_confirmation_states_the_count_lane_and_command(client, analyst_user, graph):
    actors(graph, 3)
    client.force_login(analyst_user)
    page = client.get("/resync/?scope=label&label=ThreatActor").content.decode()
    assert "Resync every ThreatActor" in page and "<strong>3</strong>" in page
    assert "manage.py resync --label ThreatActor --priority low --user ana-analyst" in page
    assert 'name="confirm"' not in page  # a small label: the button says the count
    page = client.get("/resync/?scope=all").content.decode()
    assert "Type <strong><code>everything</code></strong>" in page


def test_resync_an_entity_in_the_low_lane_audited(client, analyst_user, graph):
    actors(graph, 1)
    client.force_login(analyst_user)
    response = client.post("/resync/start", {"scope": "entity", "label": "ThreatActor", "uid": "actor-000",
                                             "note": "looks stale"})
    assert response.status_code == 302 and response["Location"] == "/entities/ThreatActor/actor-000"
    event = SyncEvent.objects.get(label="ThreatActor", uid="actor-000")
    assert (event.priority, event.source) == (Priority.LOW, "resync")
    entry = AuditEntry.objects.get(action="resync", actor=analyst_user)
    assert entry.target == "ThreatActor:actor-000" and entry.note == "looks stale"


def test_everything_needs_the_word_typed(client, analyst_user, graph):
    actors(graph, 2)
    client.force_login(analyst_user)
    response = client.post("/resync/start", {"scope": "all", "confirm": "yes"})
    assert response.status_code == 400 and b"type 'everything'" in response.content
    assert not SyncEvent.objects.exists() and not AuditEntry.objects.filter(action="resync").exists()
    response = client.post("/resync/start", {"scope": "all", "confirm": "everything", "priority": "medium"})
    assert response.status_code == 302
    assert set(SyncEvent.objects.values_list("priority", flat=True)) == {Priority.MEDIUM}
    assert AuditEntry.objects.get(action="resync").after["queued"] == 2


@pytest.mark.parametrize(("form", "words"), [
    ({"scope": "planet"}, b"scope must be one of"),
    ({"scope": "label", "label": "Contact"}, b"is not a label the policy syncs"),
    ({"scope": "entity", "label": "ThreatActor", "uid": "nobody"}, b"the graph holds no ThreatActor"),
    ({"scope": "label", "label": "ThreatActor", "priority": "urgent"}, b"priority must be one of"),
    ({"scope": "label", "label": "ThreatActor", "priority": "high"}, b"HIGH only for up to 2"),
])
def test_a_tampered_form_is_a_clear_400_and_queues_nothing(client, analyst_user, graph, monkeypatch, form, words):
    monkeypatch.setattr(resync, "HIGH_MAX", 2)
    actors(graph, 3)
    client.force_login(analyst_user)
    response = client.post("/resync/start", form)
    assert response.status_code == 400 and words in response.content, response.content
    assert not SyncEvent.objects.exists() and not AuditEntry.objects.filter(action="resync").exists()


def test_resyncs_are_rate_limited_per_user(client, analyst_user, graph, settings):
    settings.RESYNC_PER_MINUTE = 1
    actors(graph, 2)
    client.force_login(analyst_user)
    client.post("/resync/start", {"scope": "entity", "label": "ThreatActor", "uid": "actor-000"})
    response = client.post("/resync/start", {"scope": "entity", "label": "ThreatActor", "uid": "actor-001"}, follow=True)
    assert "you started 1 resyncs in the last minute" in response.content.decode()
    assert list(SyncEvent.objects.values_list("uid", flat=True)) == ["actor-000"]


def test_a_low_resync_never_starves_high_work(graph, db):
    actors(graph, 20)
    resync.start(resync.Scope(resync.LABEL, "ThreatActor"), actor="test")
    queue.enqueue(queue.Work("KEV", "CVE-2024-0001", priority=Priority.HIGH))
    [first] = queue.claim_batch("w", 1)
    assert first.label == "KEV"


def test_a_large_resync_runs_in_the_background_and_shows_progress(graph, vectors, monkeypatch, analyst_user):
    monkeypatch.setattr(resync, "INLINE_MAX", 3)
    actors(graph, 5)
    done = resync.start(resync.Scope(resync.LABEL, "ThreatActor"), actor=analyst_user)
    assert done["background"] and OrmQ.objects.count() == 1 and not SyncEvent.objects.exists()
    load = Backfill.objects.get(pk=done["backfill"])  # recorded when asked for: the overview shows it at once
    assert (load.kind, load.total, load.actor_name) == ("resync", 5, "ana-analyst")
    tasks.resync_labels(["ThreatActor"], Priority.LOW, done["audit"], done["backfill"])  # what the cluster runs
    load.refresh_from_db()
    shown = backfill.progress_of(load)
    assert (shown.total, shown.waiting, shown.done) == (5, 5, 0)
    worker.drain(idle_exit=0)
    load.refresh_from_db()
    shown = backfill.progress_of(load)
    assert (shown.waiting, shown.done, shown.finished) == (0, 5, True)


def test_the_overview_shows_a_resync_draining(client, viewer, graph, vectors):
    actors(graph, 3)
    resync.start(resync.Scope(resync.LABEL, "ThreatActor"), actor="someone")
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert "Resync: 0 of 3 entities, no estimate until its first entities are synced" in page
    assert "ThreatActor, started under a minute ago by someone: resync of ThreatActor" in page


def test_the_command_previews_and_queues(graph, capsys):
    actors(graph, 2)
    call_command("resync", "--label", "ThreatActor", "--priority", "medium")
    out = capsys.readouterr().out
    assert "every ThreatActor: 2 entities, 2 to embed, 0 metadata-only, MEDIUM lane" in out
    assert "queued 2 ThreatActor" in out
    assert set(SyncEvent.objects.values_list("priority", flat=True)) == {Priority.MEDIUM}
