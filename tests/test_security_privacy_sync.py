"""Issue 18, defect 5, through the engine: an entity whose uid holds contact details is never
synced (not even its vector id is made), and reconciliation looks for contact details in vector
ids and in every metadata value, the engine's own keys included."""

from __future__ import annotations

import pytest

from sync import capture, queue, worker
from sync.apply import WITHHELD_UID
from sync.ids import vector_id
from sync.models import SyncEvent, SyncRecord
from sync.reconcile import reconciler as reconcile
from sync.stores.base import VectorRecord

pytestmark = pytest.mark.django_db(transaction=True)
LEAKY = "jane.doe@acme.example"


@pytest.fixture
def synced(synced_graph, vectors):
    synced_graph.import_entities("ThreatActor", [{"uid": f"ta-{n}", "name": f"Actor {n}", "description": "text"}
                                                 for n in range(3)], source="test")
    queue.enqueue_many([queue.Work("ThreatActor", f"ta-{n}") for n in range(3)])
    assert worker.drain(idle_exit=0).upserted == 3
    return synced_graph, vectors


def test_an_entity_whose_uid_holds_an_address_is_never_synced_and_its_old_vectors_go(synced):
    graph, vectors = synced
    # Written by another tool (the ingest API refuses such a uid), after an older version of the
    # engine had synced it under its address.
    graph.import_entities("ThreatActor", [{"uid": LEAKY, "name": "Jane's group", "description": "text"}], source="x")
    template = vectors.fetch([vector_id("ThreatActor", "ta-0")])[vector_id("ThreatActor", "ta-0")]
    leaked = vector_id("ThreatActor", LEAKY)
    vectors.upsert([VectorRecord(leaked, template.values, {**template.metadata, "uid": LEAKY})])

    capture.poll_once("test-poller", overlap=0)
    counts = worker.drain(idle_exit=0)
    assert counts.excluded == 1 and counts.upserted == 0
    record = SyncRecord.objects.get(label="ThreatActor", uid=LEAKY)
    assert (record.status, record.last_error, record.chunk_count) == ("excluded", WITHHELD_UID, 0)

    run = reconcile.full()
    assert run.drift == {"policy_violation": 1} and run.repaired == {"policy_violation": 1}
    assert run.samples[0]["detail"] == "an e-mail address or phone number in the vector id"
    assert vectors.fetch([leaked]) == {}
    assert not SyncEvent.objects.filter(status="queued").exists()  # nothing to rebuild: it never syncs
    assert reconcile.full().drift == {}  # and it is not a missing vector either


@pytest.mark.parametrize(("key", "value"), [("model", "all-MiniLM-L6-v2 (ask jane.doe@acme.example)"),
                                            ("updated_at", "2025-03-04 call +1 202 555 0123"),
                                            ("uid", "ta-1 jane\u200b@acme.example")])
def test_reconciliation_looks_for_contact_details_in_every_metadata_value(synced, key, value):
    _, vectors = synced
    vid = vector_id("ThreatActor", "ta-1")
    stored = vectors.fetch([vid])[vid]
    vectors.upsert([VectorRecord(vid, stored.values, {**stored.metadata, key: value})])

    run = reconcile.full()
    assert run.drift == {"policy_violation": 1}
    assert run.samples[0]["detail"] == f"an e-mail address or phone number in metadata {key}"
    assert vectors.fetch([vid]) == {}
    worker.drain(idle_exit=0)  # rebuilt clean
    assert vectors.fetch([vid])[vid].metadata[key] == stored.metadata[key]
    assert reconcile.full().drift == {}
