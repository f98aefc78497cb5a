"""Entities, resync and search in real Chromium against the live server, real Neo4j and real
worker processes: find an entity and see both sides and its timeline; resync it and watch it
return to in_sync; a search hit marked stale once the graph moves ahead of the vector."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from sync import queue, worker
from sync.models import AuditEntry, SyncEvent, SyncRecord
from tests.browser.conftest import check
from tests.browser.conftest import worker as worker_process
from tests.browser.test_dashboard import stop
from tests.conftest import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
HOSTILE = "<img src=x onerror=alert(1)>"


def synced_actor(graph, uid="apt29"):
    graph.write_entity("ThreatActor", uid, {"name": "Cozy Bear", "description": f"SVR espionage group {HOSTILE}",
                                            "country": "RU", "analyst_notes_internal": "kept here"}, source="test")
    graph.write_entity("Malware", "sunburst", {"name": "SUNBURST", "description": "Backdoor in Orion."}, source="test")
    graph.import_relationships("USES", [("ThreatActor", uid, "Malware", "sunburst", {})])
    queue.enqueue_many([queue.Work("ThreatActor", uid), queue.Work("Malware", "sunburst")])
    worker.drain(idle_exit=0)


def test_find_an_entity_and_see_both_sides_and_its_timeline(live_server, page, as_user, synced_graph, vectors):
    as_user(make_user("ana", "analyst"))
    synced_actor(synced_graph)
    synced_graph.write_entity("ThreatActor", "apt29", {"country": "Russia"}, source="test")  # graph ahead
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(live_server.url + "/entities/")
    check(page, "entities")
    page.get_by_label("uid or name").fill("cozy")
    page.get_by_role("button", name="Find").click()
    expect(page).to_have_url(re.compile(r"/entities/\?q=cozy"))
    page.get_by_role("link", name="ThreatActor:apt29").click()
    expect(page.get_by_role("heading", name=re.compile("ThreatActor:apt29"))).to_be_visible()
    sides = page.locator("#sides")
    expect(sides.locator("tr[data-differs]").filter(has_text="country")).to_contain_text("the graph makes: Russia")
    expect(sides.locator("tr").filter(has_text="analyst_notes_internal")).to_contain_text("kept in the graph only")
    expect(page.locator("#chunks")).to_contain_text("Description: SVR espionage group")
    expect(sides).to_contain_text("SVR espionage group <img src=x")  # the graph's text, escaped and shown as text
    expect(page.get_by_role("link", name="Malware:sunburst")).to_be_visible()
    timeline = page.locator("ol.timeline")
    expect(timeline).to_contain_text("embedded and written to the vector index")
    check(page, "entity")
    page.get_by_label("vector writes").check()
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"kind=vector"))
    expect(timeline.locator("li .kind")).to_have_text(["vector"] * timeline.locator("li").count())
    assert dialogs == []


def test_resync_an_entity_and_watch_it_return_to_in_sync(live_server, page, as_user, synced_graph, vectors, tmp_path):
    as_user(make_user("rex", "analyst"))
    synced_actor(synced_graph)
    SyncRecord.objects.filter(uid="apt29").update(status="failed", last_error="earlier trouble")
    page.goto(live_server.url + "/entities/ThreatActor/apt29")
    page.get_by_role("link", name="Resync", exact=True).click()
    expect(page.get_by_role("heading", name="Resync ThreatActor apt29")).to_be_visible()
    expect(page.locator(".confirm")).to_contain_text("manage.py resync --entity ThreatActor:apt29 --priority low")
    check(page, "resync-confirm", dark=False)
    page.get_by_role("button", name="Resync 1 entity").click()
    expect(page.get_by_role("status")).to_contain_text("Queued a resync of ThreatActor apt29")
    expect(page.locator("#entity-record")).to_have_attribute("data-status", "failed")  # until the work is applied
    drain = worker_process("drain", "--until-empty", tmp_path=tmp_path, lancedb=vectors.directory)
    try:
        # The record region polls every 5 s: in_sync without a reload.
        expect(page.locator("#entity-record")).to_have_attribute("data-status", "in_sync", timeout=120_000)
    finally:
        stop(drain)
    assert SyncEvent.objects.get(source="resync").priority == 2
    assert AuditEntry.objects.get(action="resync").actor_name == "rex"


def test_search_marks_a_hit_stale_after_the_graph_moves_ahead(live_server, page, as_user, synced_graph, vectors):
    as_user(make_user("sam", "viewer"))
    synced_actor(synced_graph)
    page.goto(live_server.url + "/search/")
    page.get_by_label("Query").fill("Russian espionage group")
    page.get_by_role("button", name="Search").click()
    hit = page.locator("#hits tbody tr").first
    expect(hit).to_have_attribute("data-state", "in_sync")
    synced_graph.write_entity("ThreatActor", "apt29", {"description": "Now also targets cloud tenants."}, source="t")
    page.reload()
    expect(hit).to_have_attribute("data-state", "stale")
    expect(hit).to_contain_text("v1 / v2")
    check(page, "search")
    hit.get_by_role("link", name="ThreatActor:apt29").click()
    expect(page.locator("#findings-h")).to_be_visible()
