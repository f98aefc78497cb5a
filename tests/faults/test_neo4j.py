"""Neo4j killed (SIGKILL, as a crash or the OOM killer would) and started again — the suite's own
server, never the shared one: once under change capture and two batches, once under dual-writes.

Each case is one outage (a Neo4j start costs 15-30 s here), with every part of the pipeline that
meets it arranged to meet it at a known point."""

from __future__ import annotations

import dataclasses

import pytest

from sync import queue, worker, writes
from sync.apply import apply_events
from sync.models import ChangeCursor, SagaLog, SyncEvent, SyncRecord
from sync.observe import health
from sync.observe.counters import counter_totals
from sync.policy import labels as policy_labels
from sync.reconcile import reconciler
from sync.stores import use_vector_store
from sync.stores.base import RetryableStoreError
from tests.consistency import AlertOpened, FailedAttempt, SagaEnded, assert_index_matches_graph
from tests.faults.inject import BeforeFirstWrite, FailingWrites
from tests.faults.servers import wait_until
from tests.faults.work import CaptureThread, create_actors, delete_actor, edit_actor, settle, tick

pytestmark = [pytest.mark.django_db(transaction=True)]


def events() -> list[tuple[str, int | None]]:
    return sorted(SyncEvent.objects.values_list("uid", "version"))


def graph_check(client) -> tuple[int, bool]:
    """/readyz as a viewer sees it, checked now (not from the probes' cache): (HTTP status, graph ok)."""
    health.forget_recent()
    response = client.get("/readyz")
    return response.status_code, response.json()["checks"]["graph"]["ok"]


def test_capture_and_batches_outlive_a_neo4j_crash(fault_graph, own_neo4j, vectors, client, viewer):
    """Change capture polls every 0.2 s in a thread (as the scheduled task does). A first batch has
    read the graph when Neo4j is killed, as its vectors are being written; a second batch is
    claimed while Neo4j is down; then Neo4j starts again.

    Expected:
    - The first batch needs Neo4j no more: its vectors, records and acks are written (upserted 2).
    - The second batch's graph read fails: the batch fails as a whole with a retryable error,
      nothing of it reaches the vector store (the delete among its work included), each event goes
      back to the queue with its attempt counted and the error recorded, each record says `failed`.
    - Every poll while Neo4j is down fails, is counted (`sync_errors_total{kind="capture"}`) and
      recorded on the cursor, and the loop goes on. /readyz answers 503 with its graph check
      failing, and the observer opens `graph_unreachable`.
    - Once Neo4j is back, capture resumes from its cursor: what it read before the crash is not
      queued again (one event per entity), what changed after it is queued (creations, an edit
      coalesced into a waiting event). /readyz's graph check passes and the alert resolves.
    - Drained, the index equals the graph.
    """
    graph = fault_graph
    client.force_login(viewer)
    errors_before = counter_totals()["errors"].get("capture", 0)
    create_actors(graph, ["a0", "a1", "a2"])
    settle()
    with CaptureThread() as poller:
        create_actors(graph, ["b0", "b1", "b2"])
        edit_actor(graph, "a0", "Edited: now also targets water utilities.")
        delete_actor(graph, "a1")
        wait_until(lambda: events() == [("a0", 1), ("a0", 2), ("a1", 1), ("a1", 2), ("a2", 1), ("b0", 1),
                                        ("b1", 1), ("b2", 1)], "the changes to be queued", show=events)
        first = queue.claim_batch("worker-1", 2)  # two of the b*: the queue's order is the changes'
        use_vector_store(BeforeFirstWrite(vectors, own_neo4j.kill))
        try:
            counts = apply_events(first)
        finally:
            use_vector_store(vectors)
        assert own_neo4j.pid is None
        assert (counts.upserted, counts.retried) == (2, 0)
        second = queue.claim_batch("worker-2", 10)
        assert len(second) == 3
        stored_before = sorted(vectors.list_ids())
        counts = apply_events(second)
        assert (counts.retried, counts.dead) == (3, 0)
        failed = SyncEvent.objects.filter(id__in=[e.id for e in second])
        assert all(e.status == "queued" and e.attempts == 1 and "unreachable" in e.last_error for e in failed)
        assert {r.status for r in SyncRecord.objects.filter(uid__in=[e.uid for e in second])} == {"failed"}
        assert sorted(vectors.list_ids()) == stored_before  # the delete among them included

        cursor = wait_until(lambda: ChangeCursor.objects.exclude(last_error="").first(),
                            "a poll to fail and say so on the cursor")
        assert "unreachable" in cursor.last_error
        assert graph_check(client) == (503, False)
        assert "graph_unreachable" in tick().opened
        assert poller.alive

        own_neo4j.start(graph)
        waiting = next(e.uid for e in second if e.uid.startswith("b"))  # its event failed, queued
        create_actors(graph, ["c0"])
        edit_actor(graph, waiting, "Edited after the restart.")
        wait_until(lambda: ("c0", 1) in events() and (waiting, 2) in events(),
                   "the changes after the restart to be queued", show=events)
        wait_until(lambda: not ChangeCursor.objects.exclude(last_error="").exists(),
                   "a complete poll to clear the cursor's error")
    assert poller.error is None and poller.result.polled
    assert counter_totals()["errors"]["capture"] > errors_before
    assert events() == sorted([("a0", 1), ("a0", 2), ("a1", 1), ("a1", 2), ("a2", 1), ("c0", 1),
                               *((uid, 2 if uid == waiting else 1) for uid in ("b0", "b1", "b2"))])
    assert graph_check(client) == (503, True)  # the workers' heartbeats: no cluster runs here
    assert "graph_unreachable" in tick().resolved

    settle(poll=False)
    assert_index_matches_graph(graph, vectors, visible=[
        AlertOpened("graph_unreachable"), *(FailedAttempt(e.label, e.uid) for e in second)])


KEV_PROPERTIES = {"vulnerability_name": "Remote code execution in the VPN gateway", "vendor_project": "Acme",
                  "product": "Gateway", "short_description": "A crafted request runs code as root.",
                  "required_action": "Apply the vendor's update."}


def write_kev(uid: str):
    return writes.write_entity("KEV", uid, {**KEV_PROPERTIES, "cve_id": uid}, source="test")


def test_dual_writes_compensate_or_fall_back_when_neo4j_crashes(fault_graph, own_neo4j, vectors, monkeypatch):
    """KEV is dual_write; its vector write fails in three sagas around one Neo4j crash:

    - With KEV's policy set to fall back (`queue`), while Neo4j is up: the saga ends `deferred`, the
      call returns the graph write with the vector left to the queue (no compensation tried).
    - With `compensate` (KEV's real policy), Neo4j is killed as the vector write fails, so the
      compensation cannot reach the graph: the saga ends `compensation_failed`
      (CompensationFailed, not retryable), the graph keeps the new node, the `compensation_failed`
      alert opens (and `graph_unreachable`), and the entity's event waits in the queue.
    - A third dual-write while Neo4j is down fails at its first step, the read of the node its
      conflict rules need: a retryable error, before any saga starts; nothing is written anywhere.

    A drain while Neo4j is down fails both queued events (retryable, recorded). After the restart
    the queue writes both vectors at the graph's versions; a reconciliation runs and the alert
    resolves. The index equals the graph.
    """
    graph = fault_graph
    compensate = policy_labels.POLICY["KEV"]
    fall_back = dataclasses.replace(compensate, on_vector_failure=policy_labels.VectorFailure.QUEUE)
    monkeypatch.setitem(policy_labels.POLICY, "KEV", fall_back)
    use_vector_store(FailingWrites(vectors, failures=1))
    try:
        deferred = write_kev("CVE-2025-0001")
    finally:
        use_vector_store(vectors)
    assert deferred.vector_outcome == "queued" and deferred.saga.status == SagaLog.Status.DEFERRED
    assert [step["step"] for step in deferred.saga.steps] == ["graph_write", "vector_write", "enqueue"]

    monkeypatch.setitem(policy_labels.POLICY, "KEV", compensate)
    use_vector_store(FailingWrites(vectors, failures=1, before=own_neo4j.kill))
    try:
        with pytest.raises(writes.CompensationFailed) as failed:
            write_kev("CVE-2025-0002")
    finally:
        use_vector_store(vectors)
    assert not failed.value.retryable and own_neo4j.pid is None
    assert failed.value.saga.status == SagaLog.Status.COMPENSATION_FAILED
    assert {"compensation_failed", "graph_unreachable"} <= set(tick().opened)

    with pytest.raises(RetryableStoreError, match="unreachable"):
        write_kev("CVE-2025-0003")
    assert not SagaLog.objects.filter(uid="CVE-2025-0003").exists()

    waiting = SyncEvent.objects.filter(status="queued")
    assert sorted(waiting.values_list("uid", flat=True)) == ["CVE-2025-0001", "CVE-2025-0002"]
    wait_until(lambda: worker.ready_work(10).count == 2, "their backoff to pass")
    counts = apply_events(queue.claim_batch("worker", 10))
    assert counts.retried == 2
    assert all("unreachable" in error for error in SyncEvent.objects.values_list("last_error", flat=True))

    own_neo4j.start(graph)
    written = graph.get_entities([("KEV", f"CVE-2025-000{n}") for n in (1, 2, 3)])
    assert {uid: e.version for (_, uid), e in written.items()} == {"CVE-2025-0001": 1, "CVE-2025-0002": 1}
    settle()
    assert reconciler.full().status == "succeeded"
    assert {"compensation_failed", "graph_unreachable"} <= set(tick().resolved)
    assert_index_matches_graph(graph, vectors, visible=[
        SagaEnded("KEV", "CVE-2025-0001", SagaLog.Status.DEFERRED),
        SagaEnded("KEV", "CVE-2025-0002", SagaLog.Status.COMPENSATION_FAILED),
        AlertOpened("compensation_failed"), AlertOpened("graph_unreachable"),
        FailedAttempt("KEV", "CVE-2025-0001"), FailedAttempt("KEV", "CVE-2025-0002")])
