"""Reconciliation finds every injected drift on a synced graph, repairs the safe ones, and opens
conflicts for the rest, without false positives on untouched entities."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from sync import capture, queue, worker
from sync.ids import vector_id
from sync.models import ChangeCursor, Conflict, ReconcileRun, SyncEvent
from sync.reconcile import reconciler as reconcile
from sync.stores.base import VectorRecord
from tests.leaks import shown

pytestmark = pytest.mark.django_db(transaction=True)


def cypher(graph, query, **params):
    graph.driver.execute_query(query, params, database_=graph.database)


@pytest.fixture
def synced_world(synced_graph, vectors):
    """A small graph of several labels, fully synced."""
    g = synced_graph
    g.import_entities("ThreatActor", [{"uid": f"ta-{n}", "name": f"Actor {n}", "description": f"Actor {n} text",
                                       "country": "RU", "severity": "high"} for n in range(30)], source="test")
    g.import_entities("Vulnerability", [{"uid": f"CVE-2024-{1000 + n}", "title": f"Bug {n}",
                                         "description": f"Overflow {n}", "cvss_score": 7.5} for n in range(20)],
                      source="test")
    g.import_entities("Prospect", [{"uid": f"p-{n}", "name": f"Company {n}", "sector": "energy", "country": "DE",
                                    "contact_email": f"ceo{n}@company{n}.example", "annual_revenue": 1e9}
                                   for n in range(10)], source="test")
    g.import_entities("Contact", [{"uid": "c-1", "name": "Jane", "email": "jane@company0.example"}], source="test")
    for label in ("ThreatActor", "Vulnerability", "Prospect"):
        queue.enqueue_many([queue.Work(label, e.uid) for e in g.scan_label(label, None, 1000)])
    counts = worker.drain(idle_exit=0)
    assert counts.upserted == 60
    return g, vectors


def test_a_clean_graph_has_no_drift(synced_world):
    run = reconcile.full()
    assert run.status == "succeeded"
    assert run.drift == {} and run.entities_checked == 60 and run.vectors_checked == 60


def inject_all_drift(graph, vectors):
    """One of each drift kind (two for the policy violation), on known entities."""
    vectors.delete([vector_id("ThreatActor", "ta-1")])  # missing_vector
    stray = vectors.fetch([vector_id("ThreatActor", "ta-2")])[vector_id("ThreatActor", "ta-2")]
    vectors.upsert([VectorRecord(vector_id("ThreatActor", "ghost"), stray.values,  # orphan_vector
                                 {**stray.metadata, "uid": "ghost"})])
    cypher(graph, "MATCH (a:ThreatActor {uid: 'ta-3'}) SET a.version = a.version + 1, a.description = 'changed'")
    ahead = vectors.fetch([vector_id("ThreatActor", "ta-4")])[vector_id("ThreatActor", "ta-4")]
    vectors.upsert([VectorRecord(ahead.id, ahead.values, {**ahead.metadata, "version": 99})])  # vector_ahead
    vuln = vectors.fetch([vector_id("Vulnerability", "CVE-2024-1005")])[vector_id("Vulnerability", "CVE-2024-1005")]
    vectors.update_metadata({vuln.id: {**vuln.metadata, "cvss_score": 1.0}})  # content_drift
    prospect = vectors.fetch([vector_id("Prospect", "p-1")])[vector_id("Prospect", "p-1")]
    vectors.update_metadata({prospect.id: {**prospect.metadata,  # policy_violation: private field
                                           "contact_email": "ceo1@company1.example"}})
    vectors.upsert([VectorRecord(vector_id("Contact", "c-1"), stray.values,  # policy_violation: never-synced
                                 {"label": "Contact", "uid": "c-1", "email": "jane@company0.example"})])
    return {("missing_vector", "ta-1"), ("orphan_vector", "ghost"), ("stale_vector", "ta-3"),
            ("vector_ahead", "ta-4"), ("content_drift", "CVE-2024-1005"), ("policy_violation", "p-1"),
            ("policy_violation", "c-1")}


def test_a_full_run_finds_every_injected_drift_and_nothing_else(synced_world):
    graph, vectors = synced_world
    injected = inject_all_drift(graph, vectors)
    reconciler_findings = []
    original_act = reconcile.Reconciler.act

    def spy(self):
        reconciler_findings.extend((f.kind, f.uid) for f in self.findings)
        return original_act(self)

    reconcile.Reconciler.act = spy
    try:
        run = reconcile.full()
    finally:
        reconcile.Reconciler.act = original_act
    assert set(reconciler_findings) == injected  # recall 100%, no false positives
    assert run.drift == {"missing_vector": 1, "orphan_vector": 1, "stale_vector": 1, "vector_ahead": 1,
                         "content_drift": 1, "policy_violation": 2}
    assert run.repaired == {"missing_vector": 1, "orphan_vector": 1, "stale_vector": 1, "content_drift": 1,
                            "policy_violation": 2}
    # Unsafe drift went to an analyst; the private data left the store at once.
    conflict = Conflict.objects.get()
    assert (conflict.kind, conflict.uid, conflict.status) == ("vector_ahead", "ta-4", "open")
    assert vectors.fetch([vector_id("Contact", "c-1"), vector_id("ThreatActor", "ghost")]) == {}
    assert "contact_email" not in vectors.fetch([vector_id("Prospect", "p-1")]).get(
        vector_id("Prospect", "p-1"), VectorRecord("x", [], {})).metadata
    # The resyncs it queued bring the store back; a second run finds only the open conflict's drift.
    assert set(SyncEvent.objects.filter(status="queued").values_list("uid", flat=True)) == {
        "ta-1", "ta-3", "CVE-2024-1005", "p-1"}
    worker.drain(idle_exit=0)
    again = reconcile.full()
    assert again.drift == {"vector_ahead": 1}


def test_a_dry_run_reports_and_repairs_nothing(synced_world):
    graph, vectors = synced_world
    inject_all_drift(graph, vectors)
    before = sorted(vectors.list_ids(""))
    run = reconcile.full(dry_run=True)
    assert sum(run.drift.values()) == 7 and run.repaired == {}
    assert sorted(vectors.list_ids("")) == before
    assert not SyncEvent.objects.filter(status="queued").exists() and not Conflict.objects.exists()


def test_an_incremental_run_checks_recent_changes(synced_world):
    graph, vectors = synced_world
    cypher(graph, "MATCH (a:ThreatActor {uid: 'ta-7'}) SET a.description = 'foreign edit'")  # trigger stamps it
    run = reconcile.incremental()
    assert run.mode == ReconcileRun.Mode.INCREMENTAL
    assert run.drift == {"stale_vector": 1}
    assert run.entities_checked >= 1


def test_a_change_capture_has_not_queued_yet_is_in_flight_not_drift(synced_world):
    """Foreign writes after capture's cursor (an edit, a new node, a delete) are on their way:
    no run counts or repairs them, while a vector lost for an entity capture has handled (in
    its overlap window: the graph was synced seconds ago) is drift still. Once capture stops
    polling, nothing is on its way any more: the same writes are drift (the safety net)."""
    graph, vectors = synced_world
    assert capture.poll_once("test-poller").polled  # the cursor past the graph, every change handled
    assert not SyncEvent.objects.filter(status="queued").exists()
    cypher(graph, "MATCH (a:ThreatActor {uid: 'ta-7'}) SET a.description = 'foreign edit'")
    cypher(graph, "CREATE (:ThreatActor {uid: 'ta-new', name: 'New actor', description: 'foreign create'})")
    cypher(graph, "MATCH (a:ThreatActor {uid: 'ta-8'}) DETACH DELETE a")  # a tombstone, its vector left
    vectors.delete([vector_id("ThreatActor", "ta-1")])

    dry = reconcile.full(dry_run=True)
    assert dry.drift == {"missing_vector": 1}
    assert [(s["kind"], s["uid"]) for s in dry.samples] == [("missing_vector", "ta-1")]
    # Counted apart, and shown with the run: the edit, the new node and the delete.
    assert dry.in_flight == {"missing_vector": 1, "orphan_vector": 1, "stale_vector": 1}
    run = reconcile.incremental()
    assert run.drift == {"missing_vector": 1} and run.repaired == {"missing_vector": 1}
    assert list(SyncEvent.objects.filter(status="queued").values_list("uid", "source")) == [("ta-1", "reconcile")]
    assert vectors.fetch([vector_id("ThreatActor", "ta-8")])  # not deleted as an orphan: its delete is coming

    ChangeCursor.objects.update(polled_at=timezone.now() - timedelta(seconds=settings.HEARTBEAT_MAX_AGE + 1))
    assert reconcile.full(dry_run=True).drift == {"missing_vector": 1, "orphan_vector": 1, "stale_vector": 1}

    capture.poll_once("test-poller")  # capture comes back: the three writes are queued and applied
    counts = worker.drain(idle_exit=0)
    assert (counts.upserted, counts.deleted) == (3, 1)  # ta-1's resync, ta-7, ta-new; ta-8
    assert reconcile.full().drift == {}
    assert vectors.fetch([vector_id("ThreatActor", "ta-8")]) == {}


def test_the_command_prints_the_counts(synced_world):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("reconcile", "--full", "--dry-run", stdout=out)
    assert "full reconciliation" in out.getvalue() and "drift: none" in out.getvalue()


@pytest.mark.parametrize("field", ["text", "name"])
def test_a_vector_holding_a_national_phone_number_is_removed_and_rebuilt_clean(synced_world, field):
    """A vector written before phone numbers in national formats were caught: reconciliation
    reports it as a policy violation, deletes it and queues a clean rebuild."""
    graph, vectors = synced_world
    vid = vector_id("ThreatActor", "ta-5")
    leaked = vectors.fetch([vid])[vid]
    quoted = f"{leaked.metadata[field]} (helpdesk: (555) 123-4567, 020 7946 0958)"
    vectors.upsert([VectorRecord(vid, leaked.values, {**leaked.metadata, field: quoted})])

    run = reconcile.full()
    assert run.drift == {"policy_violation": 1} and run.repaired == {"policy_violation": 1}
    assert vectors.fetch([vid]) == {}  # gone at once, before any rebuild
    assert list(SyncEvent.objects.filter(status="queued").values_list("label", "uid")) == [("ThreatActor", "ta-5")]

    worker.drain(idle_exit=0)
    rebuilt = vectors.fetch([vid])[vid].metadata
    # Fragments as whole tokens: "4567" also turns up inside a content hash one time in a thousand.
    assert rebuilt[field] == leaked.metadata[field]
    assert shown(str(rebuilt), ["123-4567", "4567", "7946 0958", "7946", "0958"]) == []
    assert reconcile.full().drift == {}
