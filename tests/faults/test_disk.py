"""LanceDB's disk failing for real: its directory on a tmpfs of its own, filled to the last byte,
then made read-only (root writes through a chmod, not through a full or read-only filesystem)."""

from __future__ import annotations

import pytest

from sync.apply import apply_events
from sync.models import SyncEvent, SyncRecord
from sync.queue import claim_batch
from sync.stores import use_vector_store
from sync.stores.local_store import LanceVectorStore
from tests.consistency import AlertOpened, FailedAttempt, assert_index_matches_graph
from tests.faults.servers import tiny_filesystem
from tests.faults.work import create_actors, delete_actor, edit_actor, poll, settle, tick

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def disk(tmp_path):
    """A tmpfs of 16 MB at tmp_path/disk (skipped where this process may not mount one)."""
    try:
        with tiny_filesystem(tmp_path / "disk", size="16m") as filesystem:
            yield filesystem
    except PermissionError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def lance_on_disk(disk):
    store = LanceVectorStore(disk.path / "lancedb", table="faults", dimension=384)
    use_vector_store(store)
    yield store
    use_vector_store(None)


def changes_waiting(graph) -> list[SyncEvent]:
    """Three synced ThreatActors, then an edit, a delete and a creation, captured and claimed."""
    create_actors(graph, ["a0", "a1", "a2"])
    settle()
    edit_actor(graph, "a0", "Edited: now also targets water utilities.")
    delete_actor(graph, "a1")
    create_actors(graph, ["b0"])
    assert poll().enqueued == 3
    return claim_batch("faults-worker", 10)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_lancedb_on_a_full_or_read_only_disk(fault, fault_graph, disk, lance_on_disk):
    """LanceDB's filesystem fills up (a ballast file takes its last byte) or turns read-only while
    changes wait; later the space returns (or it is writable again).

    Expected: the batch fails as a whole with a retryable error naming the cause ("No space left
    on device" / "Read-only file system"): every event goes back to the queue with its attempt
    counted and the error recorded, every record says `failed`. The store's ping reports the disk,
    so the observer opens `vector_store_unreachable`. The table is not corrupted: a store opened
    afresh on the directory reads every vector there was, while the disk is still unusable. Once
    the disk is usable again the ping passes and the alert resolves, and the retries complete
    without anyone's help. The index equals the graph.
    """
    graph, store = fault_graph, lance_on_disk
    batch = changes_waiting(graph)
    before = {vid: record.metadata for vid, record in store.fetch(list(store.list_ids())).items()}
    assert len(before) == 3
    if fault == "full":
        disk.fill()
        cause = "No space left on device"
    else:
        disk.read_only()
        cause = "Read-only file system"

    counts = apply_events(batch)
    assert (counts.retried, counts.dead) == (3, 0)
    failed = list(SyncEvent.objects.filter(status="queued"))
    assert len(failed) == 3 and all(cause in e.last_error and e.attempts == 1 for e in failed), \
        [e.last_error for e in failed]
    assert set(SyncRecord.objects.filter(uid__in=["a0", "a1", "b0"]).values_list("status", flat=True)) == {"failed"}
    assert "vector_store_unreachable" in tick().opened
    reopened = LanceVectorStore(disk.path / "lancedb", table="faults", dimension=384)
    assert {vid: r.metadata for vid, r in reopened.fetch(list(reopened.list_ids())).items()} == before

    if fault == "full":
        disk.free()
    else:
        disk.writable()
    assert "vector_store_unreachable" in tick().resolved
    settle(poll=False)
    assert_index_matches_graph(graph, store, visible=[
        AlertOpened("vector_store_unreachable"), *(FailedAttempt(e.label, e.uid) for e in batch)])
    use_vector_store(None)
