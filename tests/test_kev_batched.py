"""The batched KEV import (`manage.py import_kev`: `import_kev_feed` with `write_through_sync_many`,
`sync.writes.write_entities`) against the real test Neo4j and real vector stores: a batch shares
one graph transaction per label, one embedding call and one vector write, while each entry keeps
its own saga — committed, or compensated and reported alone. Store faults come from the
wire-level Pinecone server (a record refused, a request failing) and tests.faults.inject."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from sync.embedding import get_embedder
from sync.ids import vector_id
from sync.ingest.kev import import_kev_feed, write_through_sync_many
from sync.models import Conflict, SagaLog, SyncEvent
from sync.stores import pinecone_store, use_vector_store
from sync.stores.base import RetryableStoreError
from tests.consistency import DeadLetter, FailedAttempt, SagaEnded, assert_index_matches_graph
from tests.faults.inject import FailingWrites
from tests.faults.work import settle
from tests.pinecone_server import pinecone_as_vector_store
from tests.test_kev_import import entry, feed

pytestmark = pytest.mark.django_db(transaction=True)

CVES = ["CVE-2021-44228", "CVE-2023-34362", "CVE-2024-3400", "CVE-2023-4966", "CVE-2021-26855"]


class Counting:
    """A real vector store that counts its upserts."""

    def __init__(self, inner):
        self.inner, self.upserts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def upsert(self, records):
        self.upserts.append(len(records))
        return self.inner.upsert(records)


@pytest.fixture
def pinecone(synced_graph):
    """The wire-level Pinecone server as the process's vector store (1 s an HTTP attempt, 8 s a call)."""
    with pinecone_as_vector_store() as installed:
        yield installed


def node(graph, label, uid):
    return graph.get_entities([(label, uid)]).get((label, uid))


def sagas() -> dict[str, str]:
    return dict(SagaLog.objects.values_list("uid", "status"))


def due_now() -> None:
    SyncEvent.objects.filter(status="queued").update(next_attempt_at=timezone.now())


def test_a_batch_is_embedded_and_written_together_each_entry_with_its_own_saga(synced_graph, vectors, monkeypatch):
    counting = Counting(vectors)
    use_vector_store(counting)
    embedder = get_embedder()
    calls = []
    real_encode = embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda texts, **kw: calls.append(len(texts)) or real_encode(texts, **kw))

    report = import_kev_feed(feed(*(entry(cve) for cve in CVES)), graph=synced_graph,
                             write_many=write_through_sync_many, batch=3)

    assert (report.imported, report.failed, report.linked, report.ok) == (5, 0, 5, True)
    assert calls == [3, 2] and counting.upserts == [3, 2]  # one embedding call and one upsert a batch
    assert sagas() == dict.fromkeys(CVES, SagaLog.Status.COMMITTED)  # one saga an entry
    assert all([s["step"] for s in saga.steps] == ["graph_write", "vector_write"] for saga in SagaLog.objects.all())
    assert set(SyncEvent.objects.filter(label="KEV").values_list("status", flat=True)) == {"done"}
    assert SyncEvent.objects.filter(label="Vulnerability", status="queued").count() == 5
    assert {node(synced_graph, "KEV", cve).version for cve in CVES} == {1}
    settle(poll=False)  # the workers embed the Vulnerability nodes
    assert_index_matches_graph(synced_graph, vectors)

    calls.clear()
    again = import_kev_feed(feed(*(entry(cve) for cve in CVES)), graph=synced_graph,
                            write_many=write_through_sync_many, batch=3)
    assert (again.unchanged, again.imported, again.updated) == (5, 0, 0) and calls == []


def test_an_entry_the_store_refuses_is_compensated_and_reported_alone(synced_graph, pinecone):
    server, store = pinecone
    refused = CVES[1]
    server.fail_ids([vector_id("KEV", refused)], status=400, message="Metadata is invalid (injected)")

    report = import_kev_feed(feed(*(entry(cve) for cve in CVES[:3])), graph=synced_graph,
                             write_many=write_through_sync_many)

    assert (report.imported, report.failed, report.linked) == (2, 1, 2)
    [error] = report.errors
    assert (error.index, error.cve_id) == (1, refused)
    assert "Metadata is invalid (injected)" in error.reason and "graph change was undone" in error.reason
    assert node(synced_graph, "KEV", refused) is None  # the node it created was deleted
    assert node(synced_graph, "Vulnerability", refused) is None  # never written: its KEV failed first
    assert sagas() == {CVES[0]: "committed", refused: "compensated", CVES[2]: "committed"}
    assert sorted(server.vector_ids()) == sorted(vector_id("KEV", cve) for cve in (CVES[0], CVES[2]))
    settle(poll=False)
    assert_index_matches_graph(synced_graph, store, dead_letters=1, visible=[
        SagaEnded("KEV", refused, "compensated"), DeadLetter("KEV", refused)])


def test_an_entry_whose_vector_write_fails_is_compensated_and_a_rerun_imports_it(
        synced_graph, pinecone, monkeypatch):
    server, store = pinecone
    monkeypatch.setattr(pinecone_store, "MAX_UPSERT_VECTORS", 1)  # one request a record
    flaky = CVES[2]
    server.fail_ids([vector_id("KEV", flaky)], status=500)  # every attempt at its request fails

    report = import_kev_feed(feed(*(entry(cve) for cve in CVES)), graph=synced_graph,
                             write_many=write_through_sync_many, batch=5)

    assert (report.imported, report.failed) == (4, 1)
    assert report.errors[0].cve_id == flaky and "HTTP 500" in report.errors[0].reason
    assert node(synced_graph, "KEV", flaky) is None
    assert sagas()[flaky] == "compensated" and list(sagas().values()).count("committed") == 4

    server.clear_faults()
    again = import_kev_feed(feed(*(entry(cve) for cve in CVES)), graph=synced_graph,
                            write_many=write_through_sync_many, batch=5)
    assert (again.imported, again.unchanged, again.failed, again.linked) == (1, 4, 0, 5)
    due_now()
    settle(poll=False)
    assert_index_matches_graph(synced_graph, store, visible=[
        SagaEnded("KEV", flaky, "compensated"), FailedAttempt("KEV", flaky)])


def test_a_store_down_for_the_whole_batch_aborts_the_run_and_leaves_no_kev(synced_graph, vectors):
    use_vector_store(FailingWrites(vectors))
    with pytest.raises(RetryableStoreError, match="graph change was undone"):
        import_kev_feed(feed(*(entry(cve) for cve in CVES[:3])), graph=synced_graph,
                        write_many=write_through_sync_many)
    assert synced_graph.count_label("KEV") == 0
    assert set(sagas().values()) == {"compensated"}


def test_an_entry_changed_meanwhile_goes_through_the_rules_on_its_own(synced_graph, vectors, monkeypatch):
    """Another source raises one entry's severity between the import's read and its write: the
    batch's version guard refuses that row, and it is written alone, the rules seeing the new
    value (the highest severity stands)."""
    from sync.stores import neo4j_graph

    raced = CVES[0]
    real = neo4j_graph.Neo4jGraphStore.write_entities

    def raced_write(self, label, rows, **kwargs):
        if label == "KEV" and not getattr(raced_write, "done", False):
            raced_write.done = True
            self.write_entity("KEV", raced, {"severity": "critical", "severity_source": "vendor-x"},
                              source="vendor-x")
        return real(self, label, rows, **kwargs)

    import_kev_feed(feed(entry(raced, knownRansomwareCampaignUse="Unknown")), graph=synced_graph,
                    write_many=write_through_sync_many)
    monkeypatch.setattr(neo4j_graph.Neo4jGraphStore, "write_entities", raced_write)
    changed = entry(raced, knownRansomwareCampaignUse="Unknown", requiredAction="Apply the new fix.")
    report = import_kev_feed(feed(changed, entry(CVES[1])), graph=synced_graph, write_many=write_through_sync_many)

    assert (report.updated, report.imported, report.failed) == (1, 1, 0)
    kev = node(synced_graph, "KEV", raced)
    assert kev.properties["required_action"] == "Apply the new fix."
    assert kev.properties["severity"] == "critical"  # the rule kept the higher value written meanwhile
    settled = Conflict.objects.get(uid=raced)
    assert (settled.status, settled.other_side, settled.graph_side) == (
        "auto_resolved", {"severity": "high"}, {"severity": "critical"})
    # The batch's saga for the raced entry was dropped (nothing written); its own saga committed.
    assert list(SagaLog.objects.values_list("status", flat=True)) == ["committed"] * 3


def test_the_command_imports_in_batches(synced_graph, vectors, tmp_path):
    path = tmp_path / "kev.json"
    path.write_text(json.dumps(feed(*(entry(cve) for cve in CVES))))
    out = StringIO()
    call_command("import_kev", str(path), "--batch", "2", stdout=out)
    assert "5 entries — 5 imported, 0 updated, 0 unchanged, 0 skipped, 0 failed; 5 KEV→Vulnerability links" in out.getvalue()
    assert vectors.stats().total == 5 and SagaLog.objects.filter(status="committed").count() == 5
