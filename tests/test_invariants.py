"""The engine's invariants, each proved against the real stores (issue: engine invariants, enforced).

1. versions never go backwards across a delete; 2. one applier per entity, fenced; 3. an
interrupted batch costs nothing (in-process part; the process-level tests are in
test_shutdown/test_timeouts); 4. every saga ends; 5. nothing an analyst must see can vanish;
7. a model change re-embeds; 8. bounded work; 10. the lag figure is true.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sync import capture, embedding, queue, worker
from sync.apply import apply_events
from sync.ids import vector_id
from sync.ingest.tokens import digest
from sync.models import Conflict, IngestToken, ReconcileRun, SagaLog, SyncEvent, SyncRecord
from sync.reconcile import reconciler as reconcile
from sync.resync import resync_labels
from sync.stores import graph_store, use_graph_store, use_vector_store
from sync.stores.base import VectorRecord
from sync.writes import SyncWriteError, write_entity
from tests.test_sync_engine import cypher, stored, sync_all

pytestmark = pytest.mark.django_db(transaction=True)


def texts(vectors, label, uid):
    """The display snippets of every vector the store holds for the entity."""
    prefix = vector_id(label, uid)
    found = vectors.fetch_metadata([vid for vid in vectors.list_ids(prefix)])
    return sorted(meta["text"] for meta in found.values())


class Wrapped:
    """A real store with one method replaced (fault injection at the seam)."""

    def __init__(self, inner, **methods):
        self.inner = inner
        self.calls: dict[str, int] = {}
        for name, method in methods.items():
            setattr(self, name, method)

    def __getattr__(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self.inner, name)


# --- 1. versions never go backwards across a delete ----------------------------------------------

def test_a_node_deleted_and_recreated_before_the_delete_is_applied_syncs_its_new_text(synced_graph, vectors):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'fin7', name: 'FIN7', description: 'draft 0'})")
    for n in range(1, 5):
        cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'fin7'}) SET a.description = $d", d=f"draft {n}")
    sync_all()
    assert texts(vectors, "ThreatActor", "fin7") == ["Name: FIN7\nDescription: draft 4"]

    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'fin7'}) DETACH DELETE a")
    capture.poll_once("test-poller", overlap=0)  # the delete is queued, not applied
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'fin7', name: 'FIN7', description: 'Carbanak group'})")
    [[version]] = cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'fin7'}) RETURN a.version")
    assert version == 7  # 5 writes, the tombstone (6), the re-creation: never back to 1

    sync_all()
    assert texts(vectors, "ThreatActor", "fin7") == ["Name: FIN7\nDescription: Carbanak group"]
    record = SyncRecord.objects.get(label="ThreatActor", uid="fin7")
    assert (record.status, record.graph_version, record.vector_version) == ("in_sync", 7, 7)


def test_applied_tombstones_are_purged_after_their_retention_only(synced_graph, vectors):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'ta505', name: 'TA505', description: 'Clop'})")
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'ta551', name: 'TA551', description: 'Shathak'})")
    sync_all()
    cypher(synced_graph, "MATCH (a:ThreatActor) DETACH DELETE a")
    capture.poll_once("test-poller", overlap=0)  # ta505's and ta551's deletes queued, not applied
    assert capture.purge_tombstones(timedelta(0)) == 0  # nothing applied yet: both kept
    worker.drain(idle_exit=0)
    assert capture.purge_tombstones(timedelta(days=1)) == 0  # applied, but younger than the retention
    assert capture.purge_tombstones(timedelta(0)) == 2
    assert cypher(synced_graph, "MATCH (t:_SyncTombstone) RETURN count(t)") == [[0]]


# --- 2. one applier per entity, fenced ----------------------------------------------------------

def _claim_as(name, visibility=None):
    return queue.claim_batch(name, 10, visibility_timeout=visibility)


def _expire(events):
    SyncEvent.objects.filter(id__in=[e.id for e in events]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_worker_that_lost_its_lease_before_applying_writes_nothing(synced_graph, vectors, graph):
    graph.write_entity("ThreatActor", "apt33", {"name": "APT33", "description": "v1 text"}, source="t")
    queue.enqueue(queue.Work("ThreatActor", "apt33"))
    late = _claim_as("late-worker")
    _expire(late)  # the late worker stalled past its visibility timeout
    graph.write_entity("ThreatActor", "apt33", {"description": "v2 text"}, source="t")
    counts = apply_events(_claim_as("other-worker"))
    assert counts.upserted == 1

    late_counts = apply_events(late)
    assert (late_counts.fenced, late_counts.upserted) == (1, 0)
    assert stored(vectors, "ThreatActor", "apt33").metadata["version"] == 2
    record = SyncRecord.objects.get(uid="apt33")
    assert (record.vector_version, record.status) == (2, "in_sync")


def test_a_worker_stalled_mid_batch_is_fenced_and_the_newer_version_stays(synced_graph, vectors, graph):
    graph.write_entity("ThreatActor", "apt34", {"name": "APT34", "description": "OilRig v1"}, source="t")
    queue.enqueue(queue.Work("ThreatActor", "apt34"))
    late = _claim_as("stalled-worker")
    model = embedding.get_embedder()
    real_encode = model.encode

    def stalled_encode(texts, *args, **kwargs):
        # The worker froze while embedding (its lease renewal too): the lease runs out, another
        # worker takes the entity and applies a newer version.
        _expire(late)
        graph.write_entity("ThreatActor", "apt34", {"description": "OilRig v2"}, source="t")
        model.encode = real_encode
        assert apply_events(_claim_as("healthy-worker")).upserted == 1
        return real_encode(texts, *args, **kwargs)

    model.encode = stalled_encode
    try:
        counts = apply_events(late)
    finally:
        model.encode = real_encode
    assert counts.fenced == 1
    assert stored(vectors, "ThreatActor", "apt34").metadata["version"] == 2
    assert "OilRig v2" in stored(vectors, "ThreatActor", "apt34").metadata["text"]
    assert SyncRecord.objects.get(uid="apt34").vector_version == 2


def test_a_late_write_that_reached_the_store_is_repaired(synced_graph, vectors, graph):
    graph.write_entity("ThreatActor", "apt35", {"name": "APT35", "description": "Charming Kitten v1"}, source="t")
    queue.enqueue(queue.Work("ThreatActor", "apt35"))
    late = _claim_as("slow-writer")
    calls = []

    def upsert(records):
        if not calls:  # the first upsert is the slow writer's: it stalls right after the fence
            calls.append(1)
            _expire(late)
            graph.write_entity("ThreatActor", "apt35", {"description": "Charming Kitten v2"}, source="t")
            assert apply_events(_claim_as("fast-writer")).upserted == 1
        return vectors.upsert(records)

    use_vector_store(Wrapped(vectors, upsert=upsert))
    counts = apply_events(late)
    assert counts.fenced == 1
    assert stored(vectors, "ThreatActor", "apt35").metadata["version"] == 1  # the late write landed
    assert SyncRecord.objects.get(uid="apt35").vector_version == 2  # but not its record
    worker.drain(idle_exit=0)  # the fenced worker queued the entity again
    assert stored(vectors, "ThreatActor", "apt35").metadata["version"] == 2


def test_a_long_batch_keeps_its_lease(synced_graph, vectors, graph, settings):
    settings.SYNC_VISIBILITY_TIMEOUT = 1
    graph.write_entity("ThreatActor", "apt37", {"name": "APT37", "description": "Reaper"}, source="t")
    queue.enqueue(queue.Work("ThreatActor", "apt37"))
    batch = _claim_as("slow-but-alive")
    model = embedding.get_embedder()
    real_encode = model.encode
    taken = []

    def slow_encode(texts, *args, **kwargs):
        threading.Event().wait(2.5)  # longer than the visibility timeout
        taken.extend(_claim_as("eager-worker"))
        return real_encode(texts, *args, **kwargs)

    model.encode = slow_encode
    try:
        counts = apply_events(batch)
    finally:
        model.encode = real_encode
    assert taken == [] and counts.upserted == 1 and counts.fenced == 0


def test_a_dual_write_waits_for_the_worker_holding_the_entity(synced_graph, vectors, graph, settings):
    from sync.queue import EntityBusy

    graph.write_entity("KEV", "CVE-2024-3400", {"cve_id": "CVE-2024-3400", "vulnerability_name": "PAN-OS"},
                       source="t")
    queue.enqueue(queue.Work("KEV", "CVE-2024-3400"))
    held = _claim_as("busy-worker")
    with pytest.raises(EntityBusy):
        queue.claim_entity(queue.Work("KEV", "CVE-2024-3400"), "saga:1", wait=0.2)
    release = threading.Timer(0.3, lambda: apply_events(held))
    release.start()
    outcome = write_entity("KEV", "CVE-2024-3400", {"notes": "patched"}, source="cisa-kev")
    release.join()
    assert outcome.saga.status == SagaLog.Status.COMMITTED
    assert stored(vectors, "KEV", "CVE-2024-3400").metadata["version"] == 2


# --- 3. an interrupted batch costs nothing ------------------------------------------------------

def test_an_interrupted_batch_is_handed_back_without_an_attempt(synced_graph, vectors, graph):
    from django_q.exceptions import TimeoutException

    for n in range(3):
        graph.write_entity("ThreatActor", f"int-{n}", {"name": f"Actor {n}", "description": "x"}, source="t")
    queue.enqueue_many([queue.Work("ThreatActor", f"int-{n}") for n in range(3)])
    batch = _claim_as("doomed-worker")
    model = embedding.get_embedder()
    real_encode = model.encode

    def timed_out(*args, **kwargs):
        raise TimeoutException("Task exceeded maximum timeout value (180 seconds)")

    model.encode = timed_out
    try:
        with pytest.raises(TimeoutException):
            apply_events(batch)
    finally:
        model.encode = real_encode
    events = SyncEvent.objects.filter(uid__startswith="int-")
    assert {(e.status, e.attempts, e.last_error) for e in events} == {("queued", 0, "")}
    assert not SyncRecord.objects.filter(uid__startswith="int-").exists()


def test_a_batch_embeds_at_most_its_chunk_bound(synced_graph, vectors, graph):
    long_text = " ".join(f"Sentence {n} about the actor's tooling and infrastructure." for n in range(120))
    for n in range(4):
        graph.write_entity("Report", f"long-{n}", {"title": "Long", "summary": long_text}, source="t")
    queue.enqueue_many([queue.Work("Report", f"long-{n}") for n in range(4)])
    chunks = len(embedding.get_embedder().split("Title: Long\nSummary: " + long_text))
    assert chunks > 2
    counts = apply_events(_claim_as("bounded"), chunk_limit=2 * chunks)
    assert (counts.upserted, counts.deferred, counts.embedded_chunks) == (2, 2, 2 * chunks)
    assert SyncEvent.objects.filter(status="queued", attempts=0).count() == 2


def test_an_interrupted_reconciliation_ends_failed(synced_graph, vectors):
    real = graph_store()

    def scan_label(*args, **kwargs):
        raise KeyboardInterrupt

    use_graph_store(Wrapped(real, scan_label=scan_label))
    try:
        with pytest.raises(KeyboardInterrupt):
            reconcile.full()
    finally:
        use_graph_store(real)
    run = ReconcileRun.objects.get()
    assert run.status == "failed" and run.finished_at and "KeyboardInterrupt" in run.error


def _stop_on_line(function, line: int):
    """A trace that raises StopRequested through sync.shutdown's handler, as a SIGTERM landing on
    the `line`-th line executed in `function`'s own frame would: only recorded while an
    exception is being handled or before the call's MARK, raised anywhere else."""
    from sync import shutdown

    seen = 0

    def trace(frame, event, arg):
        nonlocal seen
        if frame.f_code is not function.__code__:
            return None
        if event == "line":
            seen += 1
            if seen == line:
                shutdown.handle_sigterm(signal.SIGTERM, frame)
        return trace

    return trace


@pytest.mark.parametrize("where", ["reconcile", "apply"])
def test_a_stop_landing_on_any_line_leaves_nothing_running_or_in_flight(synced_graph, vectors, graph, where):
    """SIGTERM may arrive on any line, the claim of the run included (a run left 'running' was
    seen under load when it landed just after the claim's UPDATE)."""
    from sync import shutdown

    graph.write_entity("ThreatActor", "stop-0", {"name": "Actor", "description": "x"}, source="t")
    function = reconcile.execute if where == "reconcile" else apply_events
    line, finished = 0, False
    while not finished:
        line += 1
        shutdown._requested.clear()
        shutdown._interrupted.clear()
        if where == "reconcile":
            subject = ReconcileRun.objects.create(mode="full", status="queued")
            call = lambda subject=subject: reconcile.execute(subject)  # noqa: E731
        else:
            SyncEvent.objects.all().delete()
            queue.enqueue_many([queue.Work("ThreatActor", "stop-0")])
            subject = _claim_as(f"stopping-{line}")
            call = lambda subject=subject: apply_events(subject)  # noqa: E731
        sys.settrace(_stop_on_line(function, line))
        try:
            call()
            finished = not shutdown.requested()  # ran past its last line with no stop raised
        except shutdown.StopRequested:
            pass
        finally:
            sys.settrace(None)
        if where == "reconcile":
            subject.refresh_from_db()
            assert subject.status in {"queued", "failed", "succeeded"}, (line, subject.status)
            if subject.status == "failed":
                assert subject.finished_at and "StopRequested" in subject.error, line
        else:
            left = SyncEvent.objects.get()
            assert (left.status, left.attempts) == ("queued", 0) or left.status == "done", (line, left.status)
        assert line < 200
    shutdown._requested.clear()
    shutdown._interrupted.clear()
    assert line > 5  # the sweep reached well into the call


def test_a_lease_keeper_whose_batch_was_handed_back_ends_even_if_never_exited(db, settings):
    """A stop can land at the very start of the keeper's `__exit__`, before it tells the thread to
    end (the sweep above left one behind, warning every renewal for the rest of the process). The
    batch is handed back by the interruption; the keeper then has nothing to renew and ends."""
    from sync.apply import _LeaseKeeper

    settings.SYNC_VISIBILITY_TIMEOUT = 0.9  # a renewal every 0.3 s
    queue.enqueue_many([queue.Work("ThreatActor", f"keeper-{n}") for n in range(3)])
    events = _claim_as("keeper-test", visibility=60)
    keeper = _LeaseKeeper(events).__enter__()  # and no __exit__, as when the stop landed there
    try:
        time.sleep(0.7)
        assert keeper._thread.is_alive()  # still ours: kept
        assert queue.release(events) == len(events)
        keeper._thread.join(timeout=5)
        assert not keeper._thread.is_alive()
    finally:
        keeper.__exit__(None, None, None)


def test_a_reconciliation_whose_process_died_is_marked_failed(db):
    stale = timezone.now() - timedelta(minutes=30)
    dead = ReconcileRun.objects.create(mode="full", status="running", updated_at=stale)
    alive = ReconcileRun.objects.create(mode="full", status="running")
    assert reconcile.fail_abandoned() == 1
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert (dead.status, alive.status) == ("failed", "running")
    assert "stopped before it finished" in dead.error


# --- 4. every saga ends ---------------------------------------------------------------------------

KEV = {"cve_id": "CVE-2021-44228", "vulnerability_name": "Apache Log4j2 RCE", "severity": "critical"}


@pytest.mark.parametrize("failure", [
    RuntimeError("CUDA error: device-side assert triggered"),
    embedding.ImproperlyConfigured("EMBEDDING_MODEL='/models/x' is not a usable model directory"),
])
def test_a_dual_write_whose_embedding_fails_is_compensated(synced_graph, vectors, failure):
    model = embedding.get_embedder()
    real_encode = model.encode

    def broken(*args, **kwargs):
        raise failure

    model.encode = broken
    try:
        with pytest.raises(SyncWriteError, match="graph change was undone") as raised:
            write_entity("KEV", "CVE-2021-44228", KEV, source="cisa-kev")
    finally:
        model.encode = real_encode
    assert not raised.value.retryable
    saga = SagaLog.objects.get()
    assert saga.status == SagaLog.Status.COMPENSATED and type(failure).__name__ in saga.error
    assert graph_store().get_entities([("KEV", "CVE-2021-44228")]) == {}


def test_a_database_error_after_the_vector_write_is_compensated(synced_graph, vectors, monkeypatch):
    from sync import apply

    real_save = apply._save_records
    failures = []

    def failing_save(records):
        if not failures:
            failures.append(1)
            raise DatabaseError("database is locked")
        real_save(records)

    monkeypatch.setattr(apply, "_save_records", failing_save)
    with pytest.raises(SyncWriteError):
        write_entity("KEV", "CVE-2021-44228", KEV, source="cisa-kev")
    assert SagaLog.objects.get().status == SagaLog.Status.COMPENSATED
    assert stored(vectors, "KEV", "CVE-2021-44228") is not None  # written before the error...
    worker.drain(idle_exit=0)
    assert stored(vectors, "KEV", "CVE-2021-44228") is None  # ...and removed with the compensation


def test_the_api_answers_a_failed_saga_with_a_5xx_body(synced_graph, vectors, client):
    IngestToken.objects.create(name="kev", prefix="ngi_t0ken-fo", digest=digest("ngi_t0ken-for-tests"),
                               sources=["cisa-kev"], labels=["KEV"])
    model = embedding.get_embedder()
    real_encode = model.encode
    model.encode = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("model crashed"))
    try:
        response = client.post("/api/v1/entities", {"label": "KEV", "uid": "CVE-2021-44228", "properties": KEV,
                                                     "source": "cisa-kev"},
                               content_type="application/json", HTTP_AUTHORIZATION="Bearer ngi_t0ken-for-tests")
    finally:
        model.encode = real_encode
    assert response.status_code == 500
    body = response.json()
    assert "RuntimeError: model crashed" in body["error"] and body["saga"] == SagaLog.objects.get().pk


def test_a_saga_whose_process_died_ends_and_its_entity_is_requeued(db):
    from sync.writes import fail_abandoned_sagas

    stale = SagaLog.objects.create(label="KEV", uid="CVE-2020-1472",
                                   started_at=timezone.now() - timedelta(hours=1))
    SagaLog.objects.create(label="KEV", uid="CVE-2020-0601")  # still running
    assert fail_abandoned_sagas() == 1
    stale.refresh_from_db()
    assert stale.status == SagaLog.Status.COMPENSATION_FAILED
    assert SyncEvent.objects.filter(label="KEV", uid="CVE-2020-1472", status="queued").exists()


# --- 5. nothing an analyst must see can vanish -----------------------------------------------------

def test_a_held_back_value_is_stored_before_the_graph_changes(synced_graph, vectors, settings):
    settings.CONFLICT_RULES = {"threat_severity": "ask_analyst"}
    write_entity("ThreatActor", "apt29", {"name": "APT29", "severity": "high"}, source="mandiant")
    real = graph_store()
    seen_before_write = []

    def write(label, uid, properties, **kwargs):
        seen_before_write.append(Conflict.objects.filter(uid="apt29", status="open").count())
        raise RuntimeError("the process died here")

    use_graph_store(Wrapped(real, write_entity=write))
    try:
        with pytest.raises(RuntimeError):
            write_entity("ThreatActor", "apt29", {"severity": "low"}, source="osint-blog")
    finally:
        use_graph_store(real)
    assert seen_before_write == [1]  # durable before the graph write was even tried
    assert not Conflict.objects.filter(uid="apt29").exists()  # the write failed: nothing held back

    outcome = write_entity("ThreatActor", "apt29", {"severity": "low"}, source="osint-blog")
    conflict = Conflict.objects.get(uid="apt29", status="open")
    assert conflict.graph_version == outcome.entity.version
    assert (conflict.graph_side, conflict.other_side) == ({"severity": "high"}, {"severity": "low"})
    assert outcome.entity.properties["severity"] == "high"


def test_confidence_is_disputed_and_merged_for_threat_intel(synced_graph, vectors):
    write_entity("ThreatIntel", "ti-1", {"title": "Phishing wave", "severity": "medium"}, source="vendor-a",
                 confidence=0.9)
    outcome = write_entity("ThreatIntel", "ti-1", {"severity": "high"}, source="vendor-b", confidence=0.7)
    props = outcome.entity.properties
    assert props["severity"] == "high" and props["confidence"] == 0.8  # the merge rule: mean confidence
    auto = Conflict.objects.get(uid="ti-1", status="auto_resolved")
    assert auto.rule == "merge" and auto.resolved_values["confidence"] == 0.8


def test_a_kev_feed_import_goes_through_the_conflict_rules(synced_graph, vectors, tmp_path):
    import json

    from django.core.management import call_command

    write_entity("KEV", "CVE-2021-44228", {**KEV, "severity": "critical"}, source="analyst:jane")
    feed = {"title": "CISA KEV", "catalogVersion": "2024.11.05", "dateReleased": "2024-11-05T17:00:47.0000Z",
            "count": 1, "vulnerabilities": [{
                "cveID": "CVE-2021-44228", "vendorProject": "Apache", "product": "Log4j2",
                "vulnerabilityName": "Apache Log4j2 RCE", "dateAdded": "2021-12-10",
                "shortDescription": "JNDI lookups", "requiredAction": "Apply updates.", "dueDate": "2021-12-24",
                "knownRansomwareCampaignUse": "Unknown", "notes": "", "cwes": ["CWE-20"]}]}
    path = tmp_path / "kev.json"
    path.write_text(json.dumps(feed))
    call_command("import_kev", str(path), stdout=None)
    entity = graph_store().get_entities([("KEV", "CVE-2021-44228")])[("KEV", "CVE-2021-44228")]
    # The feed says "high", the analyst said "critical": the rule keeps the higher severity.
    assert entity.properties["severity"] == "critical"
    assert entity.properties["vulnerability_name"] == "Apache Log4j2 RCE" and entity.properties["source"] == "cisa-kev"
    settled = Conflict.objects.get(uid="CVE-2021-44228", label="KEV")
    assert (settled.status, settled.rule, settled.other_side) == ("auto_resolved", "highest_severity",
                                                                  {"severity": "high"})


# --- 7. a model change re-embeds --------------------------------------------------------------

@pytest.fixture
def another_model(tmp_path):
    """The bundled weights under another directory: another model identity, same 384 dimensions."""
    source = embedding.resolve_model_path(embedding.BUNDLED_MODEL)
    copy = tmp_path / "minilm-retrained"
    for path in source.rglob("*"):
        target = copy / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    current = embedding._embedder
    other = embedding.Embedder(str(copy))
    other._model = current.model if current is not None and current.is_loaded else None
    yield other
    embedding._embedder = current


def test_vectors_from_another_model_are_re_embedded_and_reported(synced_graph, vectors, graph, another_model):
    for n in range(3):
        graph.write_entity("ThreatActor", f"m-{n}", {"name": f"Actor {n}", "description": "same text"}, source="t")
    queue.enqueue_many([queue.Work("ThreatActor", f"m-{n}") for n in range(3)])
    worker.drain(idle_exit=0)
    first = embedding.model_id()
    assert {stored(vectors, "ThreatActor", f"m-{n}").metadata["model"] for n in range(3)} == {first}

    embedding._embedder = another_model  # EMBEDDING_MODEL now names another model
    assert embedding.model_id() != first
    run = reconcile.full(dry_run=True)
    assert run.drift == {"content_drift": 3} and run.embedding_models == {first: 3}
    assert all("not by minilm-retrained@" in s["detail"] for s in run.samples)

    resync_labels(["ThreatActor"], actor="test")
    counts = worker.drain(idle_exit=0)
    assert counts.upserted == 3 and counts.metadata_only == 0  # same text, new model: embedded again
    assert {stored(vectors, "ThreatActor", f"m-{n}").metadata["model"] for n in range(3)} == {embedding.model_id()}
    assert reconcile.full(dry_run=True).drift == {}


# --- 8. bounded work ------------------------------------------------------------------------------

def test_a_first_sync_of_many_entities_lists_nothing(synced_graph, vectors, graph):
    graph.import_entities("ThreatActor", [{"uid": f"new-{n}", "name": f"Actor {n}", "description": "d"}
                                          for n in range(60)], source="t")
    queue.enqueue_many([queue.Work("ThreatActor", f"new-{n}") for n in range(60)])
    counting = Wrapped(vectors)
    use_vector_store(counting)
    counts = worker.drain(idle_exit=0)
    assert counts.upserted == 60
    assert counting.calls.get("list_ids", 0) == 0 and counting.calls["fetch_metadata"] <= 2


def test_a_write_between_the_graph_read_and_the_store_read_is_no_vector_ahead(synced_graph, vectors, graph):
    """The full pass reads a page of the graph, then the store: an apply landing in between makes
    the vector look ahead of the page. That is checked against the graph as it is now, not
    opened as a conflict."""
    graph.write_entity("ThreatActor", "race-0", {"name": "Actor", "description": "first"}, source="t")
    sync_all()
    real = graph_store()

    def scan_label(label, after, limit):
        page = real.scan_label(label, after, limit)
        if any(e.uid == "race-0" for e in page) and not scanned:
            scanned.append(True)
            # The apply of a newer version lands after the page was read.
            real.write_entity("ThreatActor", "race-0", {"description": "second"}, source="t")
            sync_all()
        return page

    scanned: list[bool] = []
    use_graph_store(Wrapped(real, scan_label=scan_label))
    try:
        run = reconcile.full()
    finally:
        use_graph_store(real)
    assert scanned and "vector_ahead" not in run.drift, run.drift
    assert not Conflict.objects.exists()


def test_releasing_a_batch_is_one_bounded_transaction(synced_graph, graph):
    queue.enqueue_many([queue.Work("ThreatActor", f"r-{n}") for n in range(300)])
    batch = queue.claim_batch("releaser", 300)
    with CaptureQueriesContext(connection) as queries:
        assert queue.release(batch) == 300
    assert len(queries) < 10
    assert SyncEvent.objects.filter(status="queued", attempts=0).count() == 300


def test_a_full_reconciliation_in_small_pages_finds_every_kind(synced_graph, vectors, graph, monkeypatch):
    monkeypatch.setattr(reconcile, "GRAPH_PAGE", 3)
    monkeypatch.setattr(reconcile, "FETCH_BATCH", 4)
    monkeypatch.setattr(reconcile, "ACT_EVERY", 2)
    monkeypatch.setattr(reconcile, "REPAIR_BATCH", 1)
    graph.import_entities("ThreatActor", [{"uid": f"a-{n:02d}", "name": f"Actor {n}", "description": "d"}
                                          for n in range(12)], source="t")
    queue.enqueue_many([queue.Work("ThreatActor", f"a-{n:02d}") for n in range(12)])
    worker.drain(idle_exit=0)
    # Drift: a missing vector, an orphan, a stale vector, a stray chunk, a never-synced label.
    vectors.delete([vector_id("ThreatActor", "a-00")])
    orphan = stored(vectors, "ThreatActor", "a-01")
    vectors.upsert([VectorRecord(vector_id("ThreatActor", "ghost"), [0.1] * 384,
                                 {**orphan.metadata, "uid": "ghost"})])
    graph.write_entity("ThreatActor", "a-02", {"description": "changed behind our back"}, source="t")
    stray = stored(vectors, "ThreatActor", "a-03")
    vectors.upsert([VectorRecord(vector_id("ThreatActor", "a-03", 5), [0.1] * 384, stray.metadata)])
    vectors.upsert([VectorRecord("Contact:jane", [0.1] * 384, {"label": "Contact", "uid": "jane"})])
    SyncEvent.objects.all().delete()  # the change to a-02 was never captured

    enqueued = []
    real_enqueue = queue.enqueue_many
    monkeypatch.setattr(queue, "enqueue_many", lambda items: enqueued.append(len(items)) or real_enqueue(items))
    run = reconcile.full()
    assert run.drift == {"missing_vector": 1, "orphan_vector": 1, "stale_vector": 1, "content_drift": 1,
                         "policy_violation": 1}
    assert max(enqueued) == 1  # repairs committed in bounded batches
    assert run.progress_total == 12 + 14 and run.progress_done >= run.progress_total
    worker.drain(idle_exit=0)
    assert reconcile.full(dry_run=True).drift == {}
    assert vector_id("ThreatActor", "a-03", 5) not in set(vectors.list_ids("ThreatActor:a-03"))


# --- 10. the lag figure is true --------------------------------------------------------------------

def test_a_no_op_resync_reports_no_lag(synced_graph, vectors, graph):
    graph.write_entity("ThreatActor", "old-1", {"name": "Old", "description": "written long ago"}, source="t")
    sync_all()
    first = SyncEvent.objects.get(status="done", uid="old-1")
    assert first.lag_seconds is not None
    resync_labels(["ThreatActor"], actor="test")
    worker.drain(idle_exit=0)
    second = SyncEvent.objects.filter(status="done", uid="old-1").exclude(pk=first.pk).get()
    assert second.outcome == "unchanged" and second.lag_seconds is None


def test_lag_is_measured_on_neo4j_clock(synced_graph, vectors, graph):
    real = graph_store()
    use_graph_store(Wrapped(real, clock_offset=lambda max_age=60.0: 600.0))  # Neo4j is 10 min ahead of us
    try:
        graph.write_entity("ThreatActor", "clock-1", {"name": "Clock", "description": "x"}, source="t")
        sync_all()
    finally:
        use_graph_store(real)
    lag = SyncEvent.objects.get(status="done", uid="clock-1").lag_seconds
    assert 600 <= lag < 660
    assert abs(real.clock_offset(max_age=0)) < 5  # the real server and this host agree


def test_a_stale_event_does_not_leave_the_record_pending(synced_graph, vectors, graph):
    from sync.stores.base import Entity

    graph.write_entity("ThreatActor", "kimsuky", {"name": "Kimsuky", "description": "first"}, source="t")
    graph.write_entity("ThreatActor", "kimsuky", {"description": "second"}, source="t")
    sync_all()
    queue.enqueue(queue.Work("ThreatActor", "kimsuky", source="resync"))
    assert SyncRecord.objects.get(uid="kimsuky").status == "pending"
    old = Entity("ThreatActor", "kimsuky", 1, timezone.now() - timedelta(minutes=1),
                 {"uid": "kimsuky", "name": "Kimsuky", "description": "first", "version": 1})
    real = graph_store()
    use_graph_store(Wrapped(real, get_entities=lambda keys: {("ThreatActor", "kimsuky"): old}))
    try:
        assert worker.drain(idle_exit=0).stale == 1  # a replica that read the graph late
    finally:
        use_graph_store(real)
    record = SyncRecord.objects.get(uid="kimsuky")
    assert (record.status, record.vector_version) == ("in_sync", 2)
