"""The vector store failing: Pinecone's data plane (the wire-level test server, spoken to by the real
`pinecone` SDK) rate-limiting, erring, hanging, refusing connections, failing part of a batch,
and down for longer than the retry budget."""

from __future__ import annotations

import pytest
from django.utils import timezone
from pinecone import Index

from sync import deadletters, worker
from sync.apply import apply_events
from sync.ids import vector_id
from sync.models import SyncEvent, SyncRecord
from sync.queue import claim_batch
from sync.stores import pinecone_store
from tests.consistency import AlertOpened, DeadLetter, FailedAttempt, assert_index_matches_graph
from tests.faults.work import create_actors, poll, settle, tick
from tests.pinecone_server import DEFAULT_API_KEY, pinecone_as_vector_store

pytestmark = [pytest.mark.django_db(transaction=True)]

ACTORS = [f"a{n}" for n in range(6)]


@pytest.fixture
def pinecone(fault_graph):
    """The wire-level Pinecone server, installed as the process's vector store (1 s an HTTP attempt,
    8 s a store call)."""
    with pinecone_as_vector_store() as installed:
        yield installed


def captured(graph) -> None:
    """Six new ThreatActors, written as another tool would and captured."""
    create_actors(graph, ACTORS)
    assert poll().enqueued == len(ACTORS)


def queued_actors(graph) -> list[SyncEvent]:
    """Six new ThreatActors, captured, claimed as one batch."""
    captured(graph)
    return claim_batch("faults-worker", 100)


def due_now() -> None:
    """Skip the backoff the failure asked for (a case checks it was asked for first)."""
    SyncEvent.objects.filter(status="queued").update(next_attempt_at=timezone.now())


@pytest.mark.parametrize("fault", ["429 with Retry-After", "500", "timeout", "connection refused"])
def test_a_store_failing_for_a_while_is_ridden_out(fault, fault_graph, pinecone):
    """The first batch's upsert meets the fault on every attempt the SDK makes (its own retries
    included); the fault then clears by itself (the server restarts, for connection refused).

    Expected: the batch fails as a whole with a retryable error naming the fault: each event goes
    back to the queue with its attempt counted and the error recorded (a 429's Retry-After is the
    least backoff asked for), each record says `failed`, nothing is written. The next attempt
    writes every vector; no dead letter. The index equals the graph.
    """
    server, store = pinecone
    batch = queued_actors(fault_graph)
    expected = {"429 with Retry-After": ("HTTP 429",), "500": ("HTTP 500",),
                "timeout": ("timed out", "operation deadline"), "connection refused": ("cannot reach Pinecone",)}[fault]
    if fault == "429 with Retry-After":
        server.fail_next(429, times=4, path="/vectors/upsert", retry_after=1)  # 4 s of waits, within the 8 s deadline
    elif fault == "500":
        server.fail_next(500, times=4, path="/vectors/upsert")
    elif fault == "timeout":
        server.hang_next(times=4, path="/vectors/upsert", seconds=2)
    else:
        server.stop()
    counts = apply_events(batch)
    assert (counts.retried, counts.upserted, counts.dead) == (len(ACTORS), 0, 0)
    failed = list(SyncEvent.objects.all())
    assert all(e.status == "queued" and e.attempts == 1 and any(text in e.last_error for text in expected)
               for e in failed), [e.last_error for e in failed]
    if fault == "429 with Retry-After":
        assert all((e.next_attempt_at - e.failed_at).total_seconds() >= 1 for e in failed)
    assert set(SyncRecord.objects.values_list("status", flat=True)) == {"failed"}
    if fault == "connection refused":
        server.start()
    else:
        assert server.vector_ids() == []
    due_now()
    settle(poll=False)
    assert_index_matches_graph(fault_graph, store, visible=[FailedAttempt("ThreatActor", uid) for uid in ACTORS])


def test_the_sdks_batched_upsert_reports_failed_batches_instead_of_raising(pinecone):
    """What the `pinecone` SDK does when one request of a batched upsert (`batch_size`) fails: it
    does not raise; the response counts what landed and lists the failed items. Our store never
    sends batches that way (one request a call, each answer checked), so nothing can be dropped
    unseen by it; this pins the SDK behaviour that makes that rule necessary."""
    server, _ = pinecone
    index = Index(host=server.url, api_key=DEFAULT_API_KEY)
    vectors = [{"id": f"v{n}", "values": [0.1 + n] * 384} for n in range(6)]
    server.fail_ids(["v3"], status=400)
    response = index.upsert(vectors=vectors, batch_size=2, show_progress=False)
    assert response.has_errors and response.upserted_count == 4
    assert sorted(item["id"] for item in response.failed_items) == ["v2", "v3"]
    assert server.vector_ids() == ["v0", "v1", "v4", "v5"]
    index.close()


def test_a_partial_batch_failure_fails_exactly_the_refused_records(fault_graph, pinecone, monkeypatch):
    """One upsert call becomes three requests (two vectors each, Pinecone's 1,000 scaled down);
    one request fails on every attempt with a 500, and one record is refused outright (400).

    Expected: the store reports every failed record (`WriteResult.failed`), none silently: the
    two entities of the 500 request go back to the queue (retryable), the refused one goes dead
    (permanent, with Pinecone's message), the other three are written and done. Once Pinecone
    accepts them, the retries and a retry of the dead letter complete the batch. The index equals
    the graph.
    """
    server, store = pinecone
    monkeypatch.setattr(pinecone_store, "MAX_UPSERT_VECTORS", 2)
    batch = queued_actors(fault_graph)
    order = [e.uid for e in batch]
    flaky, refused = order[2], order[5]  # the 500 takes order[2:4] down; order[5] is refused alone
    server.fail_ids([vector_id("ThreatActor", flaky)], status=500)
    server.fail_ids([vector_id("ThreatActor", refused)], status=400, message="Metadata is invalid (injected)")
    counts = apply_events(batch)
    assert (counts.upserted, counts.retried, counts.dead) == (3, 2, 1)
    status = dict(SyncEvent.objects.values_list("uid", "status"))
    assert {uid for uid, s in status.items() if s == "queued"} == set(order[2:4])
    assert {uid for uid, s in status.items() if s == "dead"} == {refused}
    assert "Metadata is invalid" in SyncEvent.objects.get(uid=refused).last_error
    assert sorted(server.vector_ids()) == sorted(vector_id("ThreatActor", uid) for uid in (*order[:2], order[4]))

    server.clear_faults()
    retried = deadletters.retry(deadletters.Selection(label="ThreatActor", as_of=timezone.now()), "faults")
    assert retried.done == 1
    due_now()
    settle(poll=False)
    assert_index_matches_graph(fault_graph, store, visible=[
        DeadLetter("ThreatActor", refused), *(FailedAttempt("ThreatActor", uid) for uid in order[2:4])])


def test_an_outage_longer_than_the_retry_budget_ends_in_dead_letters_a_retry_completes(
        fault_graph, pinecone, settings):
    """Pinecone refuses connections (stopped) for longer than the events' attempts last
    (SYNC_MAX_ATTEMPTS 3).

    Expected: every event fails three times, then goes dead with the connection error; the
    `dead_letters` alert opens. Pinecone comes back: a retry of the dead letters (the Queue page's
    action, `sync.deadletters.retry`) queues them again and they apply; the alert resolves. The
    index equals the graph.
    """
    server, store = pinecone
    settings.SYNC_MAX_ATTEMPTS = 3
    captured(fault_graph)
    server.stop()
    worker.drain(idle_exit=None, flush=False, max_seconds=120,
                 stop=lambda: SyncEvent.objects.filter(status="dead").count() == len(ACTORS))
    dead = list(SyncEvent.objects.filter(status="dead"))
    assert len(dead) == len(ACTORS)
    assert all(e.attempts == 3 and "cannot reach Pinecone" in e.last_error for e in dead)
    assert "dead_letters" in tick().opened

    server.start()
    retried = deadletters.retry(deadletters.Selection(label="ThreatActor", as_of=timezone.now()), "faults")
    assert retried.done == len(ACTORS)
    settle(poll=False)
    assert "dead_letters" in tick().resolved
    assert_index_matches_graph(fault_graph, store, visible=[
        AlertOpened("dead_letters"), *(DeadLetter("ThreatActor", uid) for uid in ACTORS)])
