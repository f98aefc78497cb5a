"""End to end through the real engine: Neo4j -> change capture -> queue -> apply -> LanceDB."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sync import capture, queue, worker
from sync.apply import apply_events, apply_now
from sync.ids import vector_id
from sync.models import SyncEvent, SyncRecord
from sync.stores.base import Entity, RetryableStoreError

pytestmark = pytest.mark.django_db(transaction=True)


def cypher(graph, query, **params):
    records, _, _ = graph.driver.execute_query(query, params, database_=graph.database)
    return records


def sync_all(**kwargs):
    """One capture poll, then drain whatever is ready."""
    result = capture.poll_once("test-poller", overlap=0)
    counts = worker.drain(idle_exit=0, flush=False, **kwargs)
    return result, counts


def stored(vectors, label, uid):
    return vectors.fetch([vector_id(label, uid)]).get(vector_id(label, uid))


def synced_long_report(graph, uid, sentences, **properties):
    """A Report whose summary spans several chunks, written and synced."""
    long_text = " ".join(f"Sentence {n} about the actor's tooling and infrastructure." for n in range(sentences))
    graph.write_entity("Report", uid, {"title": "Long", "summary": long_text, **properties}, source="t")
    queue.enqueue(queue.Work("Report", uid))
    worker.drain(idle_exit=0)


def test_a_foreign_write_reaches_the_vector_store_with_its_version(synced_graph, vectors):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt29', name: 'APT29', description: 'Russian SVR actor'})")
    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'apt29'}) SET a.description = 'Cozy Bear, SVR'")
    [[version]] = cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'apt29'}) RETURN a.version")
    assert version == 2  # the APOC trigger stamped both foreign writes

    result, counts = sync_all()
    assert result.enqueued == 1 and counts.upserted == 1
    record = stored(vectors, "ThreatActor", "apt29")
    assert record.metadata["version"] == 2
    assert "Cozy Bear" in record.metadata["text"]
    assert SyncRecord.objects.get(label="ThreatActor", uid="apt29").status == "in_sync"


def test_a_deleted_node_loses_its_vectors(synced_graph, vectors):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt28', name: 'APT28', description: 'Fancy Bear'})")
    sync_all()
    assert stored(vectors, "ThreatActor", "apt28") is not None

    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'apt28'}) DETACH DELETE a")
    result, counts = sync_all()
    assert counts.deleted == 1
    assert list(vectors.list_ids("ThreatActor:")) == []
    record = SyncRecord.objects.get(uid="apt28")
    assert record.status == "deleted" and record.graph_version == 2  # the tombstone's version
    # The tombstone stays (versions continue from it on a re-creation); read again, it is done.
    assert cypher(synced_graph, "MATCH (t:_SyncTombstone {uid: 'apt28'}) RETURN t.version") == [[2]]
    again = capture.poll_once("test-poller", overlap=3600)
    assert again.changes == 1 and again.enqueued == 0


def test_a_label_outside_the_policy_never_reaches_the_store(synced_graph, vectors):
    cypher(synced_graph, "CREATE (:Contact {uid: 'c1', name: 'Jane Doe', email: 'jane@corp.example'})")
    cypher(synced_graph, "CREATE (:Unknown {uid: 'u1', name: 'whatever'})")
    result, _ = sync_all()
    assert result.changes == 0
    # Even when asked to, the engine refuses: the entity is recorded as excluded.
    queue.enqueue(queue.Work("Contact", "c1"))
    counts = worker.drain(idle_exit=0)
    assert counts.excluded == 1
    assert vectors.stats().total == 0


def test_a_burst_of_updates_costs_one_embedding(synced_graph, vectors):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'fin7', name: 'FIN7', description: 'v0'})")
    for n in range(50):
        cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'fin7'}) SET a.description = $d", d=f"v{n + 1}")
    _, counts = sync_all()
    assert counts.embedded_chunks == 1
    assert stored(vectors, "ThreatActor", "fin7").metadata["version"] == 51


def test_a_metadata_only_change_is_not_embedded_again(synced_graph, vectors):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'lazarus', name: 'Lazarus', description: 'DPRK', country: 'KP'})")
    sync_all()
    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'lazarus'}) SET a.confidence = 0.9")
    _, counts = sync_all()
    assert (counts.embedded_chunks, counts.metadata_only + counts.unchanged) == (0, 1)
    assert stored(vectors, "ThreatActor", "lazarus").metadata["version"] == 2


def test_a_metadata_only_change_reuses_the_stored_chunks_without_tokenizing(synced_graph, vectors, graph,
                                                                           monkeypatch):
    from sync.embedding import Embedder
    from sync.policy import build_document

    synced_long_report(graph, "r2", 300, doc_type="report")
    graph.write_entity("Report", "r2", {"doc_type": "advisory"}, source="t")
    entity = graph.get_entities([("Report", "r2")])[("Report", "r2")]
    expected = build_document(entity)
    assert len(expected.chunks) > 2

    def no_split(self, text):
        raise AssertionError("the text was tokenized again")

    monkeypatch.setattr(Embedder, "split", no_split)
    queue.enqueue(queue.Work("Report", "r2"))
    counts = worker.drain(idle_exit=0)
    assert (counts.metadata_only, counts.embedded_chunks) == (1, 0)
    written = vectors.fetch(expected.vector_ids)
    assert {vid: r.metadata for vid, r in written.items()} == {c.vector_id: c.metadata for c in expected.chunks}


def test_stored_chunks_that_do_not_cover_the_text_are_rebuilt(synced_graph, vectors, graph):
    synced_long_report(graph, "r3", 300)
    ids = sorted(vectors.list_ids("Report:"))
    vectors.delete([ids[1]])  # one chunk lost behind our back; the record still says in_sync
    graph.write_entity("Report", "r3", {"doc_type": "blog"}, source="t")
    queue.enqueue(queue.Work("Report", "r3"))
    counts = worker.drain(idle_exit=0)
    assert counts.upserted == 1 and counts.embedded_chunks == len(ids)
    assert sorted(vectors.list_ids("Report:")) == ids


def test_a_batch_embeds_at_most_its_limit_and_hands_the_rest_back(synced_graph, vectors, graph):
    for n in range(5):
        graph.write_entity("ThreatActor", f"a{n}", {"name": f"Actor {n}", "description": "new"}, source="t")
    queue.enqueue_many([queue.Work("ThreatActor", f"a{n}") for n in range(5)])
    counts = apply_events(queue.claim_batch("w", 10), embed_limit=2)
    assert (counts.upserted, counts.deferred) == (2, 3)
    back = SyncEvent.objects.filter(status="queued")
    assert back.count() == 3 and {e.attempts for e in back} == {0}
    assert SyncRecord.objects.count() == 2  # nothing recorded for the deferred entities
    counts = worker.drain(idle_exit=0)
    assert counts.upserted == 3 and vectors.stats().total == 5


def test_a_batch_applies_its_high_streaming_work_before_the_rest_is_embedded(synced_graph, vectors, graph,
                                                                             monkeypatch):
    """A worker claims HIGH first and fills the batch with lower work: the KEV is applied (vector
    written, event acked) before the batch's LOW embedding starts, not after it."""
    from sync import apply

    graph.write_entity("KEV", "CVE-2026-0042", {"cve_id": "CVE-2026-0042", "vulnerability_name": "RCE"}, source="t")
    for n in range(3):
        graph.write_entity("Report", f"low-{n}", {"title": f"Report {n}", "summary": "Long campaign."}, source="t")
    queue.enqueue_many([queue.Work("Report", f"low-{n}", priority=queue.Priority.LOW) for n in range(3)]
                       + [queue.Work("KEV", "CVE-2026-0042", priority=queue.Priority.HIGH)])
    real_run, seen = apply._run, []

    def run(plans, *args, **kwargs):
        seen.append((sorted(label for label, _ in plans),
                     SyncEvent.objects.get(label="KEV").status, stored(vectors, "KEV", "CVE-2026-0042") is not None))
        return real_run(plans, *args, **kwargs)

    monkeypatch.setattr(apply, "_run", run)
    counts = apply_events(queue.claim_batch("w", 10))
    assert counts.upserted == 4
    assert seen == [(["KEV"], "in_flight", False), (["Report", "Report", "Report"], "done", True)]


def test_a_failed_batch_hands_back_what_it_never_tried(synced_graph, vectors, graph):
    from sync.stores import use_vector_store
    from tests.faults.inject import FailingWrites

    for n in range(5):
        graph.write_entity("ThreatActor", f"b{n}", {"name": f"Actor {n}", "description": "new"}, source="t")
    queue.enqueue_many([queue.Work("ThreatActor", f"b{n}") for n in range(5)])
    use_vector_store(FailingWrites(vectors))
    counts = apply_events(queue.claim_batch("w", 10), embed_limit=2)
    assert (counts.retried, counts.deferred) == (2, 3)
    untried = SyncEvent.objects.filter(attempts=0, status="queued")
    assert untried.count() == 3 and not SyncRecord.objects.filter(uid__in=[e.uid for e in untried]).exists()


def test_a_whitespace_only_edit_rebuilds_the_snippets_without_embedding(synced_graph, vectors, graph):
    graph.write_entity("Report", "r4", {"title": "Notes", "summary": "First paragraph.\n\nSecond paragraph."},
                       source="t")
    queue.enqueue(queue.Work("Report", "r4"))
    worker.drain(idle_exit=0)
    graph.write_entity("Report", "r4", {"summary": "First paragraph. Second paragraph."}, source="t")
    queue.enqueue(queue.Work("Report", "r4"))
    counts = worker.drain(idle_exit=0)
    assert (counts.metadata_only, counts.embedded_chunks) == (1, 0)  # same content hash
    assert stored(vectors, "Report", "r4").metadata["text"] == "Title: Notes\nSummary: First paragraph. Second paragraph."


def test_records_are_upserted_and_a_failure_keeps_what_was_written():
    now = timezone.now()
    SyncRecord.upsert([SyncRecord(label="KEV", uid="CVE-1", graph_version=1, vector_version=1, content_hash="h1",
                                  chunk_count=1, status="in_sync", changed_at=now, synced_at=now)],
                      ["graph_version", "vector_version", "content_hash", "chunk_count", "status"])
    SyncRecord.upsert([SyncRecord(label="KEV", uid="CVE-1", graph_version=2, status="failed", last_error="boom")],
                      ["graph_version", "status", "last_error"])
    record = SyncRecord.objects.get()
    assert (record.graph_version, record.vector_version, record.content_hash, record.status, record.last_error) == (
        2, 1, "h1", "failed", "boom")
    assert record.synced_at == now and record.updated_at >= now


def test_an_older_version_never_overwrites_a_newer_vector(synced_graph, vectors, graph):
    graph.write_entity("ThreatActor", "sandworm", {"name": "Sandworm", "description": "first"}, source="t")
    graph.write_entity("ThreatActor", "sandworm", {"description": "second, newer"}, source="t")
    sync_all()
    assert stored(vectors, "ThreatActor", "sandworm").metadata["version"] == 2
    # A worker that read version 1 before the newer write lands late: the guard drops it.
    old = Entity("ThreatActor", "sandworm", 1, timezone.now() - timedelta(minutes=1),
                 {"uid": "sandworm", "name": "Sandworm", "description": "first", "version": 1})
    assert apply_now(old) == "stale"
    record = stored(vectors, "ThreatActor", "sandworm")
    assert record.metadata["version"] == 2 and "newer" in record.metadata["text"]


def test_a_replayed_old_event_reads_the_current_state(synced_graph, vectors, graph):
    graph.write_entity("ThreatActor", "turla", {"name": "Turla", "description": "one"}, source="t")
    graph.write_entity("ThreatActor", "turla", {"description": "two"}, source="t")
    queue.enqueue(queue.Work("ThreatActor", "turla", version=1))
    events = queue.claim_batch("w", 10)
    apply_events(events)
    assert stored(vectors, "ThreatActor", "turla").metadata["version"] == 2


def test_a_text_that_shrinks_removes_its_surplus_chunks(synced_graph, vectors, graph):
    synced_long_report(graph, "r1", 400)
    chunks = list(vectors.list_ids("Report:"))
    assert len(chunks) > 2 and all("#" in c for c in chunks)
    graph.write_entity("Report", "r1", {"summary": "Short now."}, source="t")
    queue.enqueue(queue.Work("Report", "r1"))
    worker.drain(idle_exit=0)
    assert list(vectors.list_ids("Report:")) == [vector_id("Report", "r1")]


def test_a_record_the_store_refuses_goes_dead_and_the_rest_succeed(synced_graph, vectors, graph):
    graph.write_entity("ThreatActor", "ok-1", {"name": "Fine", "description": "fine"}, source="t")
    graph.write_entity("ThreatActor", "ok-2", {"name": "Fine too", "description": "fine"}, source="t")
    graph.write_entity("ThreatActor", "bad", {"name": "Bad", "description": "refused"}, source="t")

    class Refusing:
        """The real store, refusing one id as Pinecone refuses an invalid record."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def upsert(self, records):
            keep = [r for r in records if not r.id.startswith("ThreatActor:bad")]
            result = self.inner.upsert(keep)
            for r in records:
                if r not in keep:
                    result.failed[r.id] = "metadata too large"
            return result

    from sync.stores import use_vector_store

    use_vector_store(Refusing(vectors))
    queue.enqueue_many([queue.Work("ThreatActor", uid) for uid in ("ok-1", "ok-2", "bad")])
    counts = worker.drain(idle_exit=0)
    assert (counts.upserted, counts.dead) == (2, 1), list(SyncRecord.objects.values_list("uid", "status", "last_error"))
    dead = SyncEvent.objects.get(status="dead")
    assert dead.uid == "bad" and "metadata too large" in dead.last_error
    assert SyncRecord.objects.get(uid="bad").status == "failed"


def test_the_overlap_window_does_not_requeue_an_entity_in_flight(synced_graph, vectors):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt33', name: 'APT33', description: 'Elfin'})")
    assert capture.poll_once("p", overlap=60).enqueued == 1
    [in_flight] = queue.claim_batch("slow-worker", 10)
    again = capture.poll_once("p", overlap=60)  # re-reads the same change in the overlap window
    assert (again.enqueued, again.skipped) == (0, 1)
    cypher(synced_graph, "MATCH (a:ThreatActor {uid: 'apt33'}) SET a.description = 'Elfin, Refined Kitten'")
    newer = capture.poll_once("p", overlap=60)  # a newer version must still be queued
    assert newer.enqueued == 1
    assert SyncEvent.objects.get(status="queued").version == 2
    apply_events([in_flight])


def test_a_late_committing_transaction_is_found_in_the_overlap_window(synced_graph):
    # A writer that stamps its own version and updated_at (as ours does, and the APOC trigger
    # then leaves alone) stamps when its statement runs, and becomes visible only at commit:
    # behind a cursor that may have moved past that time meanwhile.
    with synced_graph.driver.session(database=synced_graph.database) as session:
        slow = session.begin_transaction()
        slow.run("CREATE (:ThreatActor {uid: 'slow', name: 'Slow', description: 'committed late', "
                 "version: 1, updated_at: datetime()})").consume()
        cypher(synced_graph, "CREATE (:ThreatActor {uid: 'quick', name: 'Quick', description: 'committed first'})")
        first = capture.poll_once("p", overlap=1)
        slow.commit()
    assert first.enqueued == 1
    # The window reaches back a second before that complete poll began: far enough for this one.
    second = capture.poll_once("p", overlap=1)
    assert second.enqueued == 1
    assert set(SyncEvent.objects.values_list("uid", flat=True)) == {"quick", "slow"}


def test_complete_polls_bound_the_overlap_re_reads(synced_graph):
    import time

    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'bulk', name: 'Bulk', description: 'imported'})")
    reads = []
    for _ in range(3):
        reads.append(capture.poll_once("p", overlap=0.5).changes)
        time.sleep(0.6)
    # Re-read while within the overlap of a complete poll's start, then no more: the cursor
    # alone would have it re-read on every poll (it stays at the change's time).
    assert reads[0] == 1 and reads[-1] == 0


def test_the_poller_applies_high_priority_changes_itself(synced_graph, vectors, settings):
    from sync import tasks

    settings.SYNC_KICK_DRAIN = False
    cypher(synced_graph, "CREATE (:KEV {uid: 'CVE-2026-0001', cve_id: 'CVE-2026-0001', vulnerability_name: 'RCE'})")
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt34', name: 'APT34', description: 'OilRig'})")
    result = tasks.capture_changes(seconds=0.1)
    assert result["enqueued"] == 2 and result["urgent"]["upserted"] == 1
    assert stored(vectors, "KEV", "CVE-2026-0001") is not None
    # MEDIUM work is the drain workers': still queued.
    assert SyncEvent.objects.get(status="queued").uid == "apt34"


def test_the_poller_loads_the_model_before_its_first_poll(synced_graph, settings, monkeypatch):
    # A cold poller's first KEV waited 8-10 s for the weights beside a busy drain worker.
    from sync import embedding, tasks

    settings.SYNC_KICK_DRAIN = False
    steps = []
    monkeypatch.setattr(embedding, "warm_up", lambda: steps.append("warm up") or 0.0)
    real_poll = capture.poll_once
    monkeypatch.setattr(capture, "poll_once", lambda *a, **k: steps.append("poll") or real_poll(*a, **k))

    tasks.capture_changes(seconds=0.1)

    assert steps[:2] == ["warm up", "poll"]


def test_a_model_that_will_not_load_does_not_stop_change_capture(synced_graph, settings, monkeypatch):
    from sync import embedding, tasks

    settings.SYNC_KICK_DRAIN = False

    def broken():
        raise OSError("model weights missing")

    monkeypatch.setattr(embedding, "warm_up", broken)
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt34', name: 'APT34', description: 'OilRig'})")

    assert tasks.capture_changes(seconds=0.1)["enqueued"] == 1


def test_capture_polls_faster_while_high_priority_labels_change(synced_graph, settings):
    # The poll interval is most of a HIGH change's lag: after a poll finds HIGH work, polls come
    # every CAPTURE_FAST_INTERVAL until CAPTURE_FAST_SECONDS pass without one. (A long interval
    # against a short fast one, so that a slow poll on a busy machine cannot blur the two.)
    settings.SYNC_KICK_DRAIN = False
    settings.CAPTURE_FAST_INTERVAL, settings.CAPTURE_FAST_SECONDS = 0.1, 60
    polls = []

    def count(result):
        polls.append(result)

    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt34', name: 'APT34', description: 'OilRig'})")
    medium = capture.run("p", seconds=3, interval=10.0, after_poll=count)
    assert medium.enqueued == 1 and medium.urgent == 0 and len(polls) == 1
    polls.clear()
    cypher(synced_graph, "CREATE (:KEV {uid: 'CVE-2026-0001', cve_id: 'CVE-2026-0001', vulnerability_name: 'RCE'})")
    high = capture.run("p", seconds=3, interval=10.0, after_poll=count)
    assert high.enqueued == 1 and high.urgent == 1
    assert len(polls) >= 2, f"{len(polls)} polls in 3 s after a HIGH change"
    polls.clear()
    settings.CAPTURE_FAST_SECONDS = 0  # ... and back to the interval once HIGH labels are quiet
    cypher(synced_graph, "CREATE (:KEV {uid: 'CVE-2026-0002', cve_id: 'CVE-2026-0002', vulnerability_name: 'SQLi'})")
    assert capture.run("p", seconds=3, interval=10.0, after_poll=count).urgent == 1 and len(polls) == 1


def test_a_long_poll_looks_ahead_for_high_priority_changes_behind_a_bulk_write(synced_graph, settings):
    # A poll reads in stamp order: without a look ahead, a KEV changed just after a bulk write
    # waited until the poll had queued the whole bulk (seconds on a busy machine, bench/lag.py).
    settings.SYNC_KICK_DRAIN = False
    settings.CAPTURE_PAGE_SIZE, settings.CAPTURE_FAST_INTERVAL = 5, 0
    cypher(synced_graph, "UNWIND range(1, 40) AS i CREATE (:ThreatActor {uid: 'bulk-' + i, name: 'Actor ' + i})")
    cypher(synced_graph, "CREATE (:KEV {uid: 'CVE-2026-0001', cve_id: 'CVE-2026-0001', vulnerability_name: 'RCE'})")
    seen = []

    def record(result):  # what was queued when HIGH work was handed over
        seen.append((result.urgent, SyncEvent.objects.filter(label="ThreatActor").count()))

    result = capture.run("p", seconds=0.5, interval=10.0, after_poll=record)

    urgent_at = [actors for urgent, actors in seen if urgent]
    assert urgent_at and urgent_at[0] <= 5, f"HIGH work handed over after {urgent_at} of 40 bulk changes were queued"
    assert SyncEvent.objects.filter(label="ThreatActor").count() == 40  # the poll went on through the bulk
    assert SyncEvent.objects.filter(label="KEV").count() == 1  # read twice, queued once
    assert result.enqueued == 41 and result.urgent == 1


def test_a_look_ahead_that_fails_leaves_the_poll_to_read_the_change(synced_graph, settings, monkeypatch):
    settings.SYNC_KICK_DRAIN = False
    settings.CAPTURE_PAGE_SIZE, settings.CAPTURE_FAST_INTERVAL = 5, 0
    cypher(synced_graph, "UNWIND range(1, 12) AS i CREATE (:ThreatActor {uid: 'bulk-' + i, name: 'Actor ' + i})")
    cypher(synced_graph, "CREATE (:KEV {uid: 'CVE-2026-0002', cve_id: 'CVE-2026-0002', vulnerability_name: 'SQLi'})")

    def unreachable(after, **kwargs):
        raise RetryableStoreError("Neo4j unreachable")

    monkeypatch.setattr(capture, "look_ahead", unreachable)
    result = capture.run("p", seconds=0.5, interval=10.0)

    assert result.enqueued == 13 and result.urgent == 1
    assert SyncEvent.objects.filter(label="KEV").count() == 1


def test_a_capture_run_hands_the_lease_over_when_it_ends(synced_graph, settings):
    from sync.models import ChangeCursor

    settings.SYNC_KICK_DRAIN = False
    assert capture.take_lease("older-run", 60)
    # The newer run polls nothing while the older one holds the lease ...
    assert not capture.run("newer-run", seconds=0.3, interval=0.1).polled
    capture.run("older-run", seconds=0.1, interval=0.1)
    assert ChangeCursor.objects.get().lease_owner == ""
    # ... and takes over as soon as it is free.
    assert capture.run("newer-run", seconds=0.1, interval=0.1).polled


def test_a_capture_run_outlives_a_failed_poll(synced_graph, settings):
    from sync.models import ChangeCursor
    from sync.stores import graph_store, use_graph_store
    from sync.stores.base import RetryableStoreError

    settings.SYNC_KICK_DRAIN = False
    real = graph_store()

    class Flaky:
        failures = 1

        def __getattr__(self, name):
            return getattr(real, name)

        def changes_since(self, *args, **kwargs):
            if self.failures:
                self.failures -= 1
                raise RetryableStoreError("Neo4j at bolt://… is unreachable")
            return real.changes_since(*args, **kwargs)

    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt35', name: 'APT35', description: 'Charming Kitten'})")
    use_graph_store(Flaky())
    try:
        result = capture.run("p", seconds=0.35, interval=0.1)
    finally:
        use_graph_store(real)
    assert result.enqueued == 1  # the poll after the failure found the change
    assert ChangeCursor.objects.get().last_error == ""  # cleared by the successful poll


def test_a_drain_task_holds_a_slot_and_extra_drains_return_at_once(synced_graph, vectors, graph, settings):
    from sync import tasks
    from sync.models import WorkerLease

    settings.SYNC_FLUSH_INTERVAL = 0
    graph.write_entity("ThreatActor", "apt36", {"name": "APT36", "description": "Transparent Tribe"}, source="t")
    queue.enqueue(queue.Work("ThreatActor", "apt36"))
    assert WorkerLease.take(tasks.drain_slots(), "busy-elsewhere", 60) == "drain:0"
    assert tasks.drain_queue(seconds=1) == {"skipped": "all 1 drain slots are taken"}
    assert SyncEvent.objects.get().status == "queued"

    WorkerLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # its holder died
    result = tasks.drain_queue(seconds=1)
    assert (result["slot"], result["upserted"], result["successor"]) == ("drain:0", 1, False)
    assert WorkerLease.objects.get().owner == ""  # released


def test_a_drain_keeps_its_slot_through_a_long_batch(synced_graph, vectors, graph, settings, monkeypatch):
    import time

    from sync import tasks
    from sync import worker as worker_module
    from sync.models import WorkerLease

    settings.SYNC_FLUSH_INTERVAL = 0
    monkeypatch.setattr(tasks, "DRAIN_LEASE_SECONDS", 0.3)
    monkeypatch.setattr(tasks, "DRAIN_RENEW_SECONDS", 0.05)
    intruder = []
    real_apply = worker_module.apply_events

    def slow_apply(events, **kwargs):
        time.sleep(0.6)  # twice the lease: only renewals keep the slot
        intruder.append(WorkerLease.take(tasks.drain_slots(), "intruder", 60))
        return real_apply(events, **kwargs)

    monkeypatch.setattr(worker_module, "apply_events", slow_apply)
    graph.write_entity("ThreatActor", "apt37", {"name": "APT37", "description": "Reaper"}, source="t")
    queue.enqueue(queue.Work("ThreatActor", "apt37"))
    result = tasks.drain_queue(seconds=5)
    assert result["upserted"] == 1 and intruder == [None]


def test_a_drain_that_runs_out_of_time_kicks_its_successor(synced_graph, vectors, graph, settings):
    from django_q.models import OrmQ

    from sync import tasks

    settings.SYNC_FLUSH_INTERVAL = 0
    settings.SYNC_KICK_DRAIN = True
    settings.SYNC_BATCH_SIZE = 1
    for n in range(3):
        graph.write_entity("ThreatActor", f"slow-{n}", {"name": f"Actor {n}", "description": "x"}, source="t")
    queue.enqueue_many([queue.Work("ThreatActor", f"slow-{n}") for n in range(3)])
    assert OrmQ.objects.count() == 1  # storing work kicked a drain
    OrmQ.objects.all().delete()
    result = tasks.drain_queue(seconds=0.01)  # a batch of one at most, then out of time
    assert result["upserted"] <= 1 and result["successor"] is True
    assert OrmQ.objects.count() == 1
    assert SyncEvent.objects.filter(status="queued").count() >= 2


def test_schedules_are_created_idempotently():
    from django.core.management import call_command
    from django_q.models import Schedule

    call_command("setup_schedules", stdout=None)
    first = {s.name: s.next_run for s in Schedule.objects.all()}
    call_command("setup_schedules", stdout=None)
    assert {s.name: s.next_run for s in Schedule.objects.all()} == first
    assert set(first) >= {"sync: capture changes", "sync: drain queue", "reconcile: incremental", "reconcile: full"}
    assert first["reconcile: full"] > first["sync: capture changes"]
