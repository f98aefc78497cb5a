"""The engine over the Pinecone path: the real SDK against the wire-level test server, with faults."""

from __future__ import annotations

import pytest

from sync import queue, worker
from sync.ids import vector_id
from sync.models import SyncEvent, SyncRecord
from sync.stores import use_vector_store
from sync.stores.pinecone_store import PineconeVectorStore
from tests.pinecone_server import DEFAULT_API_KEY, running_pinecone_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pinecone(settings):
    settings.SYNC_BACKOFF_BASE, settings.SYNC_BACKOFF_MAX = 0.05, 0.5
    with running_pinecone_server() as server:
        store = PineconeVectorStore(api_key=DEFAULT_API_KEY, host=server.url, timeout=2.0,
                                    operation_timeout=6.0)
        use_vector_store(store)
        yield server
        use_vector_store(None)
        store.close()


def actors(graph, count):
    graph.import_entities("ThreatActor", [{"uid": f"a{n}", "name": f"Actor {n}", "description": f"Actor {n}."}
                                          for n in range(count)], source="test")
    queue.enqueue_many([queue.Work("ThreatActor", f"a{n}") for n in range(count)])


def drain_until_settled(seconds=60):
    """Drain, waiting out backoffs, until nothing is queued or in flight."""
    total = worker.drain(idle_exit=3, flush=False, max_seconds=seconds)
    assert not SyncEvent.objects.filter(status__in=["queued", "in_flight"]).exists()
    return total


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_store_failing_for_a_while_backs_off_then_succeeds(synced_graph, pinecone, status):
    actors(synced_graph, 5)
    # More failures than the SDK's own retries, so the engine's backoff has to carry the batch.
    pinecone.fail_next(status, times=8, path="/vectors/upsert", retry_after=0 if status == 429 else None)
    counts = drain_until_settled()
    assert counts.retried >= 1 and counts.upserted == 5 and counts.dead == 0
    assert all(e.attempts >= 2 for e in SyncEvent.objects.all())
    assert sorted(pinecone.vector_ids()) == sorted(vector_id("ThreatActor", f"a{n}") for n in range(5))
    assert pinecone.stored(vector_id("ThreatActor", "a3"))["metadata"]["version"] == 1


def test_a_permanently_refused_record_goes_dead_and_the_rest_of_its_batch_succeeds(synced_graph, pinecone):
    actors(synced_graph, 6)
    poisoned = vector_id("ThreatActor", "a4")
    pinecone.fail_ids([poisoned], status=400, message="Metadata size is 41000 bytes, which exceeds the limit")
    counts = drain_until_settled()
    assert (counts.upserted, counts.dead) == (5, 1)
    dead = SyncEvent.objects.get(status="dead")
    assert dead.uid == "a4" and "exceeds the limit" in dead.last_error
    assert poisoned not in pinecone.vector_ids() and len(pinecone.vector_ids()) == 5
    assert SyncRecord.objects.get(uid="a4").status == "failed"


def test_a_deleted_entity_is_removed_from_pinecone(synced_graph, pinecone):
    actors(synced_graph, 2)
    drain_until_settled()
    synced_graph.delete_entity("ThreatActor", "a1")
    queue.enqueue(queue.Work("ThreatActor", "a1", operation="delete"))
    counts = drain_until_settled()
    assert counts.deleted == 1
    assert pinecone.vector_ids() == [vector_id("ThreatActor", "a0")]
