"""Semantic search joined to the graph (in sync, stale, missing from graph, excluded raised as
drift) and the search canary (found, missed → warning alert and a chart marker)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.utils import timezone

from sync import queue, worker
from sync.embedding import get_embedder
from sync.ids import vector_id
from sync.models import SyncEvent
from sync.observe import alerting, overview, readings, samples
from sync.observe.models import Alert, CanaryCheck
from sync.search import canary
from sync.search import query as search
from sync.stores import use_vector_store
from sync.stores.base import VectorRecord
from tests.test_entities_page import Unreachable

pytestmark = pytest.mark.django_db(transaction=True)

ACTORS = {
    "apt29": {"name": "APT29", "description": "Cozy Bear, a Russian SVR espionage group phishing diplomats."},
    "fin7": {"name": "FIN7", "description": "Financially motivated group stealing payment cards from restaurants."},
}


def sync_actors(graph):
    for uid, props in ACTORS.items():
        graph.write_entity("ThreatActor", uid, props, source="test")
        queue.enqueue(queue.Work("ThreatActor", uid))
    worker.drain(idle_exit=0)


def test_a_hit_in_sync_comes_first_with_its_score(graph, vectors):
    sync_actors(graph)
    results = search.search("Russian espionage against diplomats")
    first = results.hits[0]
    assert (first.label, first.uid, first.state) == ("ThreatActor", "apt29", "in_sync")
    assert first.vector_version == first.graph_version == 1 and first.score > results.hits[1].score
    assert search.search("payment cards", label="Malware").hits == []


def test_a_hit_is_stale_once_the_graph_moves_ahead_and_the_page_shows_both_versions(client, viewer, graph, vectors):
    sync_actors(graph)
    graph.write_entity("ThreatActor", "apt29", {"country": "RU"}, source="test")  # not synced
    client.force_login(viewer)
    page = client.get("/search/?q=Cozy+Bear+espionage&k=2").content.decode()
    assert 'data-state="stale"' in page and "<code>v1</code> / <code>v2</code>" in page
    assert 'href="/entities/ThreatActor/apt29"' in page and "1 stale" in page


def test_a_deleted_node_is_missing_from_graph(graph, vectors):
    sync_actors(graph)
    graph.delete_entity("ThreatActor", "fin7")
    hit = search.search("payment cards from restaurants", top_k=1).hits[0]
    assert (hit.uid, hit.state, hit.graph_version) == ("fin7", "missing_from_graph", None)


def test_a_never_synced_label_in_the_index_is_excluded_and_raised_as_drift(graph, vectors):
    text = "Jane Roe, head of security, phone on file"
    vectors.upsert([VectorRecord(vector_id("Contact", "c-1"), get_embedder().encode([text])[0].tolist(),
                                 {"label": "Contact", "uid": "c-1", "version": 1, "text": text})])
    hit = search.search("head of security Jane Roe", top_k=1).hits[0]
    assert (hit.label, hit.state) == ("Contact", "excluded")
    repair = SyncEvent.objects.get(label="Contact", uid="c-1")
    assert repair.source == "search"
    worker.drain(idle_exit=0)
    assert vectors.fetch([vector_id("Contact", "c-1")]) == {}  # the worker removed it


@pytest.mark.parametrize(("query", "words"), [
    ("q=x&label=Contact", b"label must be one of"), ("q=x&k=0", b"top-k must be between 1 and 50"),
    ("q=" + "x" * 1001, b"at most 1000 characters"),
])
def test_a_bad_search_is_a_clear_400(client, viewer, vectors, query, words):
    client.force_login(viewer)
    response = client.get(f"/search/?{query}")
    assert response.status_code == 400 and words in response.content


def test_an_unreachable_vector_store_is_a_message(client, viewer, graph, vectors):
    use_vector_store(Unreachable())
    try:
        client.force_login(viewer)
        response = client.get("/search/?q=anything")
    finally:
        use_vector_store(vectors)
    assert response.status_code == 200 and b"vector store unreachable" in response.content


def sync_kev(graph, uid="CVE-2024-3400"):
    graph.write_entity("KEV", uid, {"cve_id": uid, "vulnerability_name": "PAN-OS GlobalProtect command injection",
                                    "vendor_project": "Palo Alto Networks", "product": "PAN-OS",
                                    "short_description": "OS command injection in the GlobalProtect gateway."},
                       source="test")
    queue.enqueue(queue.Work("KEV", uid, priority=0))
    worker.drain(idle_exit=0)


def test_the_canary_finds_recent_high_entities_and_a_miss_alerts(client, viewer, graph, vectors, settings):
    sync_actors(graph)
    sync_kev(graph)
    [check] = canary.run()
    assert (check.label, check.uid, check.found, check.rank) == ("KEV", "CVE-2024-3400", True, 1)
    assert alerting.evaluate(readings.read(), rules=(alerting.BY_KEY["search_canary"],)) is not None
    assert not Alert.objects.filter(rule="search_canary").exists()

    vectors.delete([vector_id("KEV", "CVE-2024-3400")])  # the index lost it; our record still says in_sync
    [check] = canary.run()
    assert not check.found and check.rank is None and not check.error
    alerting.evaluate(readings.read(), rules=(alerting.BY_KEY["search_canary"],))
    alert = Alert.objects.get(rule="search_canary", status=Alert.Status.OPEN)
    assert alert.severity == "warning" and "KEV:CVE-2024-3400" in alert.summary
    window = samples.window("1h")
    assert [m.kind for m in overview.markers(window)] == ["canary"]
    client.force_login(viewer)
    page = client.get("/search/").content.decode()
    assert "missed" in page and "found" in page


def test_the_canary_has_a_schedule_and_keeps_a_month(graph, vectors):
    call_command("setup_schedules", stdout=None)
    from django_q.models import Schedule

    assert Schedule.objects.get(name="search: canary").func == "sync.tasks.search_canary"
    CanaryCheck.objects.create(at=timezone.now() - canary.KEEP * 2, label="KEV", uid="old", top_k=5)
    sync_kev(graph)
    canary.run()
    assert not CanaryCheck.objects.filter(uid="old").exists()
