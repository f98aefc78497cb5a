"""The two-phase write mode (sync.writes, docs/engine-api.md "Write modes") against the real test
Neo4j and real vector stores: both sides prepared in the call (the graph write in an open
transaction, the vector embedded and checked against the store's limits), then the graph commits
and the vector is written best-effort. Faults come from the stores themselves (a LanceDB index of
another dimension, the wire-level Pinecone server answering 500 or refusing connections); only an
interruption is injected."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from django.utils import timezone

from sync import capture
from sync.embedding import get_embedder
from sync.ids import vector_id
from sync.models import SagaLog, SyncEvent
from sync.observe.counters import SYNC_ERRORS
from sync.policy import POLICY, LabelPolicy, Priority, VectorFailure, WriteMode
from sync.policy import summary as policy_summary
from sync.stores import use_vector_store
from sync.stores.local_store import LanceVectorStore
from sync.writes import SyncWriteError, write_entity
from tests.consistency import FailedAttempt, SagaEnded, assert_index_matches_graph
from tests.faults.work import settle
from tests.pinecone_server import pinecone_as_vector_store

pytestmark = pytest.mark.django_db(transaction=True)

ACTOR = {"name": "APT41", "description": "Double Dragon: espionage and financially motivated intrusions."}
CHANGED = {"description": "Double Dragon, now also deploying ransomware against healthcare."}


@pytest.fixture
def two_phase(monkeypatch):
    """ThreatActor written in the two-phase mode, its policy otherwise as it is."""
    rule = dataclasses.replace(POLICY["ThreatActor"], write_mode=WriteMode.TWO_PHASE)
    monkeypatch.setitem(POLICY, "ThreatActor", rule)
    return rule


@pytest.fixture
def pinecone(synced_graph):
    """The wire-level Pinecone server as the process's vector store (1 s an HTTP attempt, 8 s a call)."""
    with pinecone_as_vector_store() as installed:
        yield installed


class Watching:
    """A real vector store whose `dimension` — read by the prepare, inside the open transaction —
    first runs `hook()`."""

    def __init__(self, inner, hook):
        self.inner, self.hook = inner, hook

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def dimension(self):
        self.hook()
        return self.inner.dimension


def node(graph, uid="apt41"):
    return graph.get_entities([("ThreatActor", uid)]).get(("ThreatActor", uid))


def tombstones(graph) -> int:
    records, _, _ = graph.driver.execute_query("MATCH (t:_SyncTombstone) RETURN count(t) AS n", database_=graph.database)
    return records[0]["n"]


def steps(saga: SagaLog) -> list[tuple[str, bool]]:
    return [(step["step"], step["ok"]) for step in saga.steps]


def test_both_sides_are_prepared_then_the_graph_commits_and_the_vector_is_written(
        synced_graph, vectors, two_phase, monkeypatch):
    embedder = get_embedder()
    calls = []
    real_encode = embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda texts, **kw: calls.append(len(texts)) or real_encode(texts, **kw))

    outcome = write_entity("ThreatActor", "apt41", ACTOR, source="analyst")

    assert (outcome.mode, outcome.vector_outcome, outcome.entity.version) == ("two_phase", "upserted", 1)
    assert outcome.saga.status == SagaLog.Status.COMMITTED
    assert steps(outcome.saga) == [("prepare_graph", True), ("prepare_vector", True), ("commit_graph", True),
                                   ("vector_write", True)]
    assert calls == [1]  # embedded once, in the prepare: the vector write reused it
    stored = vectors.fetch([vector_id("ThreatActor", "apt41")])[vector_id("ThreatActor", "apt41")]
    assert stored.metadata["version"] == 1
    assert SyncEvent.objects.get().status == SyncEvent.Status.DONE  # the call's own event
    assert_index_matches_graph(synced_graph, vectors)


def test_until_it_commits_nobody_sees_the_write(synced_graph, vectors, two_phase):
    write_entity("ThreatActor", "apt41", ACTOR, source="analyst")
    seen = []
    use_vector_store(Watching(vectors, lambda: seen.append(node(synced_graph))))
    outcome = write_entity("ThreatActor", "apt41", CHANGED, source="analyst")

    # Read from another session while the write was prepared: the committed state only.
    assert [(e.version, e.properties["description"]) for e in seen] == [(1, ACTOR["description"])]
    assert outcome.entity.version == 2 and node(synced_graph).properties["description"] == CHANGED["description"]
    use_vector_store(vectors)
    assert_index_matches_graph(synced_graph, vectors)


def test_a_vector_the_store_would_refuse_commits_nothing(synced_graph, vectors, two_phase, tmp_path):
    """An index of another dimension (made for another model): the prepared vector does not fit."""
    write_entity("ThreatActor", "apt41", ACTOR, source="analyst")
    capture.poll_once("test", overlap=0)
    other = LanceVectorStore(tmp_path / "other", table="test", dimension=768)
    use_vector_store(other)

    with pytest.raises(SyncWriteError, match="nothing was committed") as raised:
        write_entity("ThreatActor", "apt41", CHANGED, source="analyst")
    assert not raised.value.retryable
    assert "384 values, the index has dimension 768" in str(raised.value)
    with pytest.raises(SyncWriteError, match="nothing was committed"):
        write_entity("ThreatActor", "apt42", ACTOR, source="analyst")

    entity = node(synced_graph)
    assert (entity.version, entity.properties["description"]) == (1, ACTOR["description"])
    assert node(synced_graph, "apt42") is None and tombstones(synced_graph) == 0
    assert capture.poll_once("test", overlap=0).enqueued == 0  # no change for capture to find
    saga = SagaLog.objects.filter(uid="apt41").latest("id")
    assert saga.status == SagaLog.Status.ABORTED and steps(saga) == [("prepare_graph", True), ("prepare_vector", False)]
    assert other.stats().total == 0 and not SyncEvent.objects.exclude(status="done").exists()
    use_vector_store(vectors)
    assert_index_matches_graph(synced_graph, vectors, visible=[SagaEnded("ThreatActor", "apt41", "aborted")])


def test_a_uid_no_vector_can_carry_is_refused_before_it_is_created(synced_graph, vectors, two_phase):
    uid = "apt-" + "x" * 1100  # over MAX_UID_CHARS: no vector's metadata can hold it
    with pytest.raises(SyncWriteError, match="uid longer than 1024 characters"):
        write_entity("ThreatActor", uid, ACTOR, source="analyst")
    assert synced_graph.count_label("ThreatActor") == 0 and tombstones(synced_graph) == 0
    assert SagaLog.objects.get().status == SagaLog.Status.ABORTED


def test_an_interrupted_prepare_commits_nothing(synced_graph, vectors, two_phase):
    write_entity("ThreatActor", "apt41", ACTOR, source="analyst")

    def interrupt():
        raise KeyboardInterrupt

    use_vector_store(Watching(vectors, interrupt))
    with pytest.raises(KeyboardInterrupt):
        write_entity("ThreatActor", "apt41", CHANGED, source="analyst")
    assert node(synced_graph).version == 1
    assert SagaLog.objects.latest("id").status == SagaLog.Status.ABORTED


@pytest.mark.parametrize("fault", ["500", "connection refused"])
def test_a_store_failing_after_the_commit_keeps_the_graph_and_retries_the_vector(
        fault, synced_graph, two_phase, pinecone):
    server, store = pinecone
    write_entity("ThreatActor", "apt41", ACTOR, source="analyst")
    if fault == "500":
        server.fail_next(500, times=4, path="/vectors/upsert")  # every attempt the SDK makes
    else:
        server.stop()

    errors = {kind: SYNC_ERRORS.labels(kind)._value.get() for kind in ("two_phase", "dual_write")}
    outcome = write_entity("ThreatActor", "apt41", CHANGED, source="analyst")  # does not raise

    assert (outcome.vector_outcome, outcome.saga.status) == ("queued", SagaLog.Status.DEFERRED)
    # Counted as what it was, not as a dual-write saga's failure.
    assert SYNC_ERRORS.labels("two_phase")._value.get() == errors["two_phase"] + 1
    assert SYNC_ERRORS.labels("dual_write")._value.get() == errors["dual_write"]
    assert steps(outcome.saga) == [("prepare_graph", True), ("prepare_vector", True), ("commit_graph", True),
                                   ("vector_write", False), ("enqueue", True)]
    assert node(synced_graph).version == 2  # the graph write stands: nothing compensated
    assert node(synced_graph).properties["description"] == CHANGED["description"]
    event = SyncEvent.objects.get(status="queued")
    assert (event.uid, event.version, event.failed_at is not None) == ("apt41", 2, True)
    expected = "HTTP 500" if fault == "500" else "cannot reach Pinecone"
    assert expected in event.last_error and expected in outcome.saga.error
    if fault == "connection refused":
        server.start()
    assert store.fetch_metadata([vector_id("ThreatActor", "apt41")])[vector_id("ThreatActor", "apt41")]["version"] == 1

    SyncEvent.objects.filter(status="queued").update(next_attempt_at=timezone.now())  # skip the backoff
    settle(poll=False)
    assert_index_matches_graph(synced_graph, store, visible=[
        SagaEnded("ThreatActor", "apt41", "deferred"), FailedAttempt("ThreatActor", "apt41")])


def test_a_writer_waits_for_the_prepared_write_and_lands_after_it(synced_graph, vectors, two_phase):
    write_entity("ThreatActor", "apt41", ACTOR, source="analyst")
    other = threading.Thread(target=lambda: synced_graph.write_entity(
        "ThreatActor", "apt41", {"description": "Edited by another tool."}, source="other-tool"))

    def start_the_other_writer():
        if not other.is_alive() and other.ident is None:
            other.start()
            other.join(0.3)  # it blocks on the node's lock until our commit

    use_vector_store(Watching(vectors, start_the_other_writer))
    outcome = write_entity("ThreatActor", "apt41", CHANGED, source="analyst")
    other.join(30)
    assert outcome.entity.version == 2
    entity = node(synced_graph)
    assert (entity.version, entity.properties["description"]) == (3, "Edited by another tool.")
    use_vector_store(vectors)
    settle()  # change capture finds the other tool's write
    assert_index_matches_graph(synced_graph, vectors)


def test_a_two_phase_label_cannot_be_compensated():
    with pytest.raises(ValueError, match="only a dual_write can be compensated"):
        LabelPolicy("Campaign", True, "campaign", Priority.HIGH, WriteMode.TWO_PHASE,
                    text_fields=(("name", "Name"),), on_vector_failure=VectorFailure.COMPENSATE)


def test_the_policy_page_shows_the_mode_and_compares_the_three(client, viewer, two_phase):
    client.force_login(viewer)
    page = client.get("/policy/").content.decode()
    row = page.split('id="label-ThreatActor"')[1].split("</tr>")[0]
    assert "Two-phase write <code>two_phase</code>" in row
    assert "if the vector write fails: keep the graph write and queue the vector" in row
    modes = page.split('id="modes-heading"')[1].split("</section>")[0]
    for mode in WriteMode:
        assert f'id="mode-{mode.value}"' in modes
    two = modes.split('id="mode-two_phase"')[1].split("</dd>")[0]
    assert "A failed prepare commits nothing" in two and "<code>ThreatActor</code>" in two
    kinds = {row["write_mode"]: row["labels"] for row in policy_summary.as_json()["write_modes"]}
    assert "ThreatActor" in kinds["two_phase"] and "KEV" in kinds["dual_write"]
