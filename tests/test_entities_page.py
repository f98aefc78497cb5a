"""The entities list and one entity's page: both sides compared, neighbours, the timeline, and a
store that does not answer shown as such (never a 500)."""

from __future__ import annotations

from datetime import UTC

import pytest
from django.utils import timezone

from sync import queue, worker
from sync.entities import lookup as entities
from sync.entities import timeline
from sync.models import AuditEntry, Conflict, ReconcileRun, SagaLog, SyncEvent, SyncRecord
from sync.stores import use_graph_store, use_vector_store
from sync.stores.base import RetryableStoreError
from sync.stores.neo4j_graph import Neo4jGraphStore

pytestmark = pytest.mark.django_db(transaction=True)


def synced_actor(graph, uid="apt29", **properties):
    graph.write_entity("ThreatActor", uid, {"name": "APT29", "description": "Russian SVR intrusion set",
                                            "country": "RU", "severity": "high", **properties}, source="test")
    queue.enqueue(queue.Work("ThreatActor", uid))
    worker.drain(idle_exit=0)


def unreachable_neo4j():
    """A real driver to a port nobody listens on."""
    return Neo4jGraphStore("bolt://127.0.0.1:1", "neo4j", "unused", retry_time=1.0)


class Unreachable:
    """A vector store whose every call fails the way a lost connection does."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise RetryableStoreError(f"store at 127.0.0.1:1 is unreachable ({name})")
        return fail


# --- the list ---------------------------------------------------------------------------------

def records(n, **fields):
    now = timezone.now()
    SyncRecord.objects.bulk_create([
        SyncRecord(label=fields.get("label", "Malware"), uid=f"{fields.get('prefix', 'm')}-{i:03d}",
                   status=fields.get("status", "in_sync"), graph_version=2, vector_version=2, synced_at=now)
        for i in range(n)])


def test_the_list_filters_by_label_status_and_priority(client, viewer, graph):
    records(3, label="Malware")
    records(2, label="KEV", prefix="CVE", status="failed")
    client.force_login(viewer)
    page = client.get("/entities/?status=failed").content.decode()
    assert "2 entities match" in page and "KEV:CVE-000" in page and "Malware:m-000" not in page
    page = client.get("/entities/?priority=high").content.decode()
    assert "KEV:CVE-001" in page and "Malware:" not in page
    page = client.get("/entities/?label=Malware&sort=-entity").content.decode()
    assert page.index("Malware:m-002") < page.index("Malware:m-000")


def test_the_search_finds_uids_and_graph_names(client, viewer, graph):
    graph.write_entity("ThreatActor", "intrusion-set--7", {"name": "Cozy Bear"}, source="t")
    SyncRecord.objects.create(label="ThreatActor", uid="intrusion-set--7", status="in_sync")
    SyncRecord.objects.create(label="ThreatActor", uid="apt-cozy-9", status="pending")
    SyncRecord.objects.create(label="ThreatActor", uid="other", status="pending")
    client.force_login(viewer)
    page = client.get("/entities/?q=cozy").content.decode()
    assert "ThreatActor:intrusion-set--7" in page and "ThreatActor:apt-cozy-9" in page
    assert "ThreatActor:other" not in page and "1 graph node by name" in page
    page = client.get("/entities/?q=co").content.decode()  # too short for a name scan
    assert "names are searched from 3 characters on" in page and "ThreatActor:intrusion-set--7" not in page


def test_the_list_pages_are_bounded(client, viewer, db):
    records(entities.PAGE_SIZE + 1)
    client.force_login(viewer)
    first = client.get("/entities/?sort=entity").content.decode()
    assert "page 1 of 2" in first
    assert 'href="?sort=entity&amp;page=2"' in first  # the Next link ({% querystring %} writes the "?")
    assert "m-050" in client.get("/entities/?page=2&sort=entity").content.decode()
    response = client.get(f"/entities/?page={entities.MAX_PAGE + 1}")
    assert response.status_code == 400 and b"narrow the filter" in response.content


@pytest.mark.parametrize(("query", "words"), [
    ("status=gone", b"status must be one of"), ("priority=urgent", b"priority must be one of"),
    ("sort=drop", b"sort must be one of"), ("label=Bad%20Label", b"label must be a graph label"),
    ("page=x", b"page must be a number"),
])
def test_a_tampered_filter_is_a_clear_400(client, viewer, query, words):
    client.force_login(viewer)
    response = client.get(f"/entities/?{query}")
    assert response.status_code == 400 and words in response.content


def test_names_are_not_searched_when_neo4j_does_not_answer(client, viewer, db):
    SyncRecord.objects.create(label="ThreatActor", uid="apt-cozy-9", status="pending")
    use_graph_store(unreachable_neo4j())
    try:
        client.force_login(viewer)
        page = client.get("/entities/?q=cozy").content.decode()
    finally:
        use_graph_store(None)
    assert "names were not searched, only uids" in page and "ThreatActor:apt-cozy-9" in page


# --- one entity -------------------------------------------------------------------------------

def test_an_entity_in_sync_shows_both_sides_agreeing(client, viewer, synced_graph, vectors):
    synced_actor(synced_graph, contact_email="ops@example.org", internal_memo="not for the index")
    view = entities.entity_view("ThreatActor", "apt29")
    assert view.state == "in_sync" and view.differing == 0 and len(view.chunks) == 1
    roles = {row.name: row for row in view.fields}
    assert roles["name"].role == "embedded+metadata" and roles["name"].vector == "APT29"
    # Outside the label's display allow-list, whatever the name: withheld by policy.
    assert roles["internal_memo"].role == "graph_only" and roles["internal_memo"].withheld
    assert roles["contact_email"].withheld and roles["contact_email"].graph == "withheld by policy"
    client.force_login(viewer)
    page = client.get("/entities/ThreatActor/apt29").content.decode()
    assert "kept in the graph only" in page and "not for the index" not in page
    assert "ops@example.org" not in page and "withheld by policy" in page
    assert "Russian SVR intrusion set" in page  # the chunk's snippet
    assert "Priority MEDIUM, Async write-through." in page  # the policy's lane in words, not its stored 1
    # The node's updated_at as the dashboard writes every moment: a <time> with the absolute UTC
    # second in its title, never Python's str() with microseconds.
    stamp = roles["updated_at"].graph.astimezone(UTC)
    assert f'title="{stamp:%Y-%m-%d %H:%M:%S} UTC"' in page and f"{stamp:%H:%M:%S}.{stamp:%f}" not in page


def test_a_local_datetime_property_is_shown_as_written_not_a_500(client, viewer, synced_graph, vectors):
    # A foreign tool's LocalDateTime has no zone: no relative time can be made of it.
    synced_actor(synced_graph)
    with synced_graph.driver.session(database=synced_graph.database) as session:
        session.run("MATCH (n:ThreatActor {uid: 'apt29'}) SET n.first_seen = localdatetime('2024-03-09T10:11:12')").consume()
    client.force_login(viewer)
    response = client.get("/entities/ThreatActor/apt29")
    assert response.status_code == 200 and "2024-03-09 10:11:12" in response.content.decode()


def test_a_graph_ahead_of_its_vector_is_shown_as_stale_with_the_differences(client, viewer, synced_graph, vectors):
    synced_actor(synced_graph)
    synced_graph.write_entity("ThreatActor", "apt29", {"country": "Russia"}, source="test")  # not synced yet
    view = entities.entity_view("ThreatActor", "apt29")
    assert view.state == "stale"
    assert set(view.chunks[0].differences) == {"version", "content_hash", "country"}
    assert any("1 version(s) behind" in words for words in view.findings)
    client.force_login(viewer)
    page = client.get("/entities/ThreatActor/apt29").content.decode()
    assert 'data-differs="1"' in page and "the graph makes: Russia" in page and "(graph v2)" in page


def test_neighbours_link_to_their_pages(client, viewer, synced_graph, vectors):
    synced_actor(synced_graph)
    synced_graph.write_entity("Malware", "sunburst", {"name": "SUNBURST"}, source="t")
    synced_graph.import_relationships("USES", [("ThreatActor", "apt29", "Malware", "sunburst", {})])
    client.force_login(viewer)
    page = client.get("/entities/ThreatActor/apt29").content.decode()
    assert 'href="/entities/Malware/sunburst"' in page and "USES" in page and "SUNBURST" in page
    page = client.get("/entities/Malware/sunburst").content.decode()
    assert 'href="/entities/ThreatActor/apt29"' in page and "← <code>USES</code> ←" in page


def test_a_never_synced_label_is_kept_in_the_graph_only(client, viewer, graph, vectors):
    graph.write_entity("Contact", "c-1", {"full_name": "Jane Roe", "phone": "+1 555 0100"}, source="t")
    view = entities.entity_view("Contact", "c-1")
    assert view.state == "excluded" and not view.chunks
    client.force_login(viewer)
    page = client.get("/entities/Contact/c-1").content.decode()
    assert "+1 555 0100" not in page and "never synced" in page


@pytest.mark.parametrize("which", ["graph", "vector"])
def test_an_unreachable_store_is_a_clear_message_not_a_500(client, viewer, graph, vectors, which):
    SyncRecord.objects.create(label="ThreatActor", uid="apt29", status="in_sync", graph_version=1)
    if which == "graph":
        use_graph_store(unreachable_neo4j())
    else:
        use_vector_store(Unreachable())
    try:
        client.force_login(viewer)
        response = client.get("/entities/ThreatActor/apt29")
    finally:
        use_graph_store(None)
        use_vector_store(vectors)
    assert response.status_code == 200
    page = response.content.decode()
    assert ("graph unreachable" if which == "graph" else "vector store unreachable") in page
    assert "is unreachable" in page and "cannot be compared" in page


def test_an_impossible_key_is_404(client, viewer, db):
    client.force_login(viewer)
    assert client.get("/entities/Not%20A%20Label/x").status_code == 404


# --- the timeline -----------------------------------------------------------------------------

def test_the_timeline_joins_every_record_newest_first(client, viewer, synced_graph, vectors, analyst_user):
    synced_actor(synced_graph)
    SyncEvent.objects.create(label="ThreatActor", uid="apt29", version=3, status="dead", attempts=8,
                             last_error="PermanentStoreError: refused", finished_at=timezone.now())
    saga = SagaLog(label="ThreatActor", uid="apt29", status="compensated", previous_version=1, new_version=2,
                   finished_at=timezone.now())
    saga.step("graph_write", True)
    saga.step("vector_write", False, "timeout")
    saga.save()
    conflict = Conflict.objects.create(kind="threat_severity", label="ThreatActor", uid="apt29",
                                       graph_side={"severity": "high"}, other_side={"severity": "low"},
                                       rule="ask_analyst", status="resolved", resolved_at=timezone.now(),
                                       resolver=analyst_user, note="MITRE says high")
    run = ReconcileRun.objects.create(mode="full", status="succeeded", finished_at=timezone.now(),
                                      samples=[{"kind": "stale_vector", "label": "ThreatActor", "uid": "apt29",
                                                "detail": "vector v1 < graph v2"},
                                               {"kind": "stale_vector", "label": "Malware", "uid": "apt29"}])
    AuditEntry.record(analyst_user, "resync", "ThreatActor:apt29")
    moments = timeline.timeline("ThreatActor", "apt29")
    kinds = {m.kind for m in moments}
    assert kinds == {"graph", "queue", "attempt", "vector", "saga", "conflict", "reconcile", "analyst"}
    assert [m.at for m in moments] == sorted((m.at for m in moments), reverse=True)
    assert sum(m.kind == "reconcile" for m in moments) == 1
    assert any(m.title.endswith("embedded and written to the vector index") for m in moments)
    client.force_login(viewer)
    page = client.get("/entities/ThreatActor/apt29?kind=reconcile&kind=analyst").content.decode()
    assert f'href="/reconciliation/{run.pk}/"' in page and "resync by ana-analyst" in page
    assert "saga step vector_write" not in page and "MITRE says high" not in page
    page = client.get("/entities/ThreatActor/apt29?kind=conflict").content.decode()
    assert "MITRE says high" in page and conflict.kind.replace("_", " ") in page
    assert client.get("/entities/ThreatActor/apt29?kind=bogus").status_code == 400


def test_the_record_region_polls_and_is_204_while_unchanged(client, viewer, db):
    SyncRecord.objects.create(label="ThreatActor", uid="apt29", status="pending", graph_version=2)
    client.force_login(viewer)
    response = client.get("/entity-record/ThreatActor/apt29")
    assert response.status_code == 200 and b'data-status="pending"' in response.content
    version = response.content.decode().split("?v=")[1].split('"')[0]
    assert client.get(f"/entity-record/ThreatActor/apt29?v={version}").status_code == 204
    SyncRecord.objects.filter(uid="apt29").update(status="in_sync", vector_version=2)
    assert b'data-status="in_sync"' in client.get(f"/entity-record/ThreatActor/apt29?v={version}").content
