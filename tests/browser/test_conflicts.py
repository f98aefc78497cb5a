"""Conflicts in real headless Chromium against the live server, the real test Neo4j and real
workers: resolving field by field and watching the vector follow, a stale resolution refused in
place, keyboard triage through three conflicts, bulk "resolve similar", axe and screenshots."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from sync import ids
from sync.models import AuditEntry, Conflict
from sync.writes import write_entity
from tests.browser.conftest import check, worker
from tests.conftest import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
HOSTILE = "<img src=x onerror=alert(1)>"


def node(graph, label, uid):
    return graph.get_entities([(label, uid)])[(label, uid)]


def drain(tmp_path, vectors):
    """A real worker process applies the queue to the vector store and exits."""
    process = worker("drain", "--until-empty", tmp_path=tmp_path, lancedb=vectors.directory)
    assert process.wait(timeout=300) == 0, (tmp_path / "drain.log").read_text()[-2000:]


def radio(page, field, side):
    return page.get_by_role("group", name=f"Value for {field}").get_by_role("radio", name=re.compile(f"^{side}"))


def vector_versions(vectors, label, uid):
    found = [vid for vid in vectors.list_ids(ids.entity_prefix(label, uid)) if ids.belongs_to_entity(vid, label, uid)]
    return {meta.get("version") for meta in vectors.fetch_metadata(found).values()}


def severity_disputes(n, *, prefix="actor", graph_source="vendor-a", other_source="vendor-b"):
    for i in range(n):
        uid = f"{prefix}-{i}"
        write_entity("ThreatActor", uid, {"name": f"Actor {i} {HOSTILE}", "severity": "low",
                                          "description": f"Intrusion set {i} targeting energy firms."},
                     source=graph_source, confidence=0.9)
        write_entity("ThreatActor", uid, {"severity": "critical"}, source=other_source, confidence=0.3)


@pytest.fixture
def prospect_conflict(synced_graph, vectors, settings, tmp_path):
    """A synced prospect, then a source disagreeing on three of its fields (ask_analyst)."""
    settings.CONFLICT_RULES = {"prospect_metadata": "ask_analyst"}
    write_entity("Prospect", "acme", {"name": "Acme Energy", "sector": "energy", "tier": "2", "size_band": "mid",
                                      "country": "NO"}, source="crm", confidence=0.9)
    drain(tmp_path, vectors)
    write_entity("Prospect", "acme", {"sector": "utilities", "tier": "1", "size_band": "large"},
                 source="enrichment", confidence=0.7)
    drain(tmp_path, vectors)  # the held-back write is a version too
    return Conflict.objects.get(status="open")


def test_resolve_field_by_field_and_see_the_graph_change_and_the_vector_follow(
        live_server, page, as_user, prospect_conflict, synced_graph, vectors, tmp_path):
    as_user(make_user("ana", "analyst"))
    before = node(synced_graph, "Prospect", "acme").version
    assert vector_versions(vectors, "Prospect", "acme") == {before}
    page.goto(live_server.url + "/conflicts/")
    check(page, "conflicts")
    page.get_by_role("link", name="Prospect:acme").click()
    expect(page.get_by_role("heading", name=re.compile("Prospect Metadata conflict on"))).to_be_visible()
    check(page, "conflict")
    rows = page.locator("#fields tr.field")
    expect(rows).to_have_count(3)  # sector, size_band, tier
    radio(page, "sector", "left").check()
    radio(page, "tier", "right").check()
    page.get_by_label("Edited value for size_band").fill("enterprise")
    expect(radio(page, "size_band", "edit")).to_be_checked()
    expect(page.locator('[data-preview="size_band"]')).to_have_text("enterprise")
    expect(page.locator("#effect")).to_contain_text("re-embedded")
    page.get_by_label(re.compile("^Note")).fill("registry says tier 1; size from the annual report")
    page.get_by_role("button", name="Resolve").click()
    expect(page.get_by_role("status")).to_contain_text("Prospect:acme: resolved: fields")
    acme = node(synced_graph, "Prospect", "acme")
    assert (acme.properties["sector"], acme.properties["tier"], acme.properties["size_band"]) == (
        "energy", "1", "enterprise")
    assert acme.version == before + 1
    drain(tmp_path, vectors)
    assert vector_versions(vectors, "Prospect", "acme") == {acme.version}
    audit = AuditEntry.objects.get(action="conflict.resolve")
    assert audit.after == {"sector": "energy", "tier": "1", "size_band": "enterprise"}


def test_a_conflict_made_stale_by_a_concurrent_write_is_refused_and_shows_the_new_state(
        live_server, page, as_user, prospect_conflict, synced_graph):
    as_user(make_user("sam", "analyst"))
    page.goto(live_server.url + f"/conflicts/{prospect_conflict.pk}/")
    radio(page, "sector", "right").check()
    radio(page, "tier", "right").check()
    radio(page, "size_band", "left").check()
    page.get_by_label(re.compile("^Note")).fill("enrichment is newer")
    write_entity("Prospect", "acme", {"sector": "oil and gas"}, source="crm")  # meanwhile, the owner of sector
    page.get_by_role("button", name="Resolve").click()
    expect(page.get_by_role("status")).to_contain_text("changed since it was shown")
    sector = page.locator('#fields tr[data-field="sector"]')
    expect(sector.locator("td.left")).to_have_text("oil and gas")
    expect(sector).to_contain_text("changed since you looked")
    expect(radio(page, "sector", "right")).not_to_be_checked()
    expect(radio(page, "tier", "right")).to_be_checked()
    expect(radio(page, "size_band", "left")).to_be_checked()
    expect(page.get_by_label(re.compile("^Note"))).to_have_value("enrichment is newer")
    check(page, "conflict-stale", dark=False)
    assert Conflict.objects.get(pk=prospect_conflict.pk).status == "open"
    assert node(synced_graph, "Prospect", "acme").properties["tier"] == "2"


def test_keyboard_triage_through_three_conflicts(live_server, page, as_user, synced_graph, vectors):
    severity_disputes(3)
    as_user(make_user("kai", "analyst"))
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(live_server.url + "/conflicts/?kind=threat_severity")
    page.keyboard.press("j")
    expect(page.get_by_role("link", name="ThreatActor:actor-0")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile("on ThreatActor:actor-0$"))).to_be_visible()
    page.keyboard.press("?")
    expect(page.get_by_role("dialog", name="Keyboard")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog", name="Keyboard")).to_be_hidden()
    for n in range(3):
        expect(page.get_by_role("heading", name=re.compile(f"on ThreatActor:actor-{n}$"))).to_be_visible()
        page.keyboard.press("2")
        expect(radio(page, "severity", "right")).to_be_checked()
        page.keyboard.press("1")
        expect(radio(page, "severity", "left")).to_be_checked()
        page.keyboard.press("2")
        page.keyboard.press("Enter")  # no note yet: the note field is focused instead
        expect(page.get_by_label(re.compile("^Note"))).to_be_focused()
        page.keyboard.type(f"vendor-b confirmed #{n}")
        page.keyboard.press("Enter")
        expect(page.get_by_role("status")).to_contain_text(f"ThreatActor:actor-{n}: resolved")
    expect(page).to_have_url(re.compile(r"/conflicts/\?kind=threat_severity$"))  # none left: back to the list
    for n in range(3):
        assert node(synced_graph, "ThreatActor", f"actor-{n}").properties["severity"] == "critical"
    assert AuditEntry.objects.filter(action="conflict.resolve", actor__username="kai").count() == 3
    assert dialogs == [], "hostile text ran as script"


def test_bulk_resolve_similar_on_a_filtered_selection(live_server, page, as_user, synced_graph, vectors):
    severity_disputes(3)
    severity_disputes(2, prefix="other", graph_source="vendor-c")  # same kind and field, other sources
    as_user(make_user("bo", "analyst"))
    page.goto(live_server.url + "/conflicts/?kind=threat_severity")
    expect(page.locator("#count-threat_severity")).to_have_text("5")
    page.get_by_role("link", name="ThreatActor:actor-1").click()
    expect(page.get_by_role("heading", name="Resolve similar")).to_be_visible()
    page.get_by_role("link", name="Take the other side for all 3…").click()
    expect(page.get_by_role("heading", name=re.compile(
        r"^Take the other side's value for 3 open threat severity conflicts on ThreatActor severity "
        r"between vendor-a \(graph\) and vendor-b"))).to_be_visible()
    expect(page.locator("pre.command")).to_contain_text("manage.py conflicts --apply right --kind threat_severity")
    check(page, "conflicts-confirm")
    page.get_by_label(re.compile("^Note")).fill("vendor-b is right about these three")
    page.get_by_role("button", name="Take the other side's value for 3 conflicts").click()
    expect(page.get_by_role("status")).to_contain_text("Resolved 3 of 3 conflicts")
    assert sorted(Conflict.objects.filter(status="open").values_list("uid", flat=True)) == ["other-0", "other-1"]
    for n in range(3):
        assert node(synced_graph, "ThreatActor", f"actor-{n}").properties["severity"] == "critical"
    assert AuditEntry.objects.filter(action="conflict.resolve", note="vendor-b is right about these three").count() == 3


def test_a_viewer_sees_the_conflict_but_no_decision(live_server, page, as_user, synced_graph, vectors):
    severity_disputes(1)
    as_user(make_user("val", "viewer"))
    conflict = Conflict.objects.get(status="open")
    page.goto(live_server.url + f"/conflicts/{conflict.pk}/")
    expect(page.locator("#fields")).to_be_visible()
    expect(page.get_by_role("button", name="Resolve")).to_have_count(0)
    expect(page.get_by_role("radio")).to_have_count(0)
    page.goto(live_server.url + "/conflicts/")
    expect(page.get_by_role("link", name=re.compile("^Apply the proposal"))).to_have_count(0)
