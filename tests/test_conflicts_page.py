"""The conflict list, the conflict page and bulk actions through HTTP: filters and counts, the two
panes with the word diff, per-field decisions, the stale refusal shown in place, tampered forms
refused with nothing written, and bulk actions over a confirmed snapshot."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from sync.conflicts import review as conflict_review
from sync.models import AuditEntry, Conflict
from sync.writes import write_entity

pytestmark = pytest.mark.django_db(transaction=True)
HOSTILE = "<img src=x onerror=alert(1)>"


def node(graph, label, uid):
    return graph.get_entities([(label, uid)])[(label, uid)]


@pytest.fixture
def prospect(synced_graph, vectors, settings):
    """An open prospect_metadata conflict on two fields (ask_analyst), made by the write path."""
    settings.CONFLICT_RULES = {"prospect_metadata": "ask_analyst"}
    write_entity("Prospect", "acme", {"name": "Acme Energy", "sector": "energy", "tier": "2", "country": "NO"},
                 source="crm", confidence=0.9)
    write_entity("Prospect", "acme", {"sector": "utilities", "tier": "1"}, source="enrichment", confidence=0.7)
    return Conflict.objects.get(status="open")


def form(conflict, note="checked the registry", **choices):
    data = {"version": str(conflict.graph_version), "note": note,
            "seen": json.dumps(conflict.graph_side)}
    for name, side in choices.items():
        data[f"choice-{name}"] = side
    return data


def test_the_list_filters_counts_by_kind_and_shows_oldest_first(client, viewer, db):
    now = timezone.now()
    for n, kind in enumerate(["threat_severity", "threat_severity", "vulnerability_score", "prospect_metadata"]):
        Conflict.objects.create(kind=kind, label="ThreatActor", uid=f"a{n}", rule="highest_severity" if n else "merge",
                                graph_side={"severity": "high"}, other_side={"severity": "low"},
                                created_at=now - timedelta(hours=n * 30))
    Conflict.objects.create(kind="threat_severity", label="KEV", uid="done", status="resolved",
                            graph_side={"severity": "high"}, other_side={"severity": "low"})
    client.force_login(viewer)
    page = client.get("/conflicts/")
    assert page.status_code == 200
    assert [c.uid for c in page.context["listing"].conflicts] == ["a3", "a2", "a1", "a0"]  # oldest first
    assert dict(page.context["listing"].by_kind) == {"threat_severity": 2, "vulnerability_score": 1,
                                                     "prospect_metadata": 1}
    only = client.get("/conflicts/?kind=threat_severity&age=24h")
    assert [c.uid for c in only.context["listing"].conflicts] == ["a1"]
    assert dict(only.context["listing"].by_kind)["threat_severity"] == 1  # counts keep the other filters
    assert [c.uid for c in client.get("/conflicts/?rule=merge").context["listing"].conflicts] == ["a0"]
    assert [c.uid for c in client.get("/conflicts/?status=resolved&label=KEV").context["listing"].conflicts] == ["done"]
    assert len(client.get("/conflicts/?status=all").context["listing"].conflicts) == 5
    assert [c.uid for c in client.get("/conflicts/?sort=newest").context["listing"].conflicts][0] == "a0"
    for bad in ("kind=nonsense", "status=gone", "age=3y", "sort=sideways", "page=x"):
        response = client.get(f"/conflicts/?{bad}")
        assert response.status_code == 400 and b"must be" in response.content, bad


def test_pagination_is_bounded(client, viewer, db):
    Conflict.objects.bulk_create([Conflict(kind="threat_severity", label="ThreatActor", uid=f"u{n}",
                                           graph_side={"severity": "high"}, other_side={"severity": "low"})
                                  for n in range(conflict_review.PAGE_SIZE + 3)])
    client.force_login(viewer)
    second = client.get("/conflicts/?page=2").context["listing"]
    assert (second.page, second.pages, len(second.conflicts), second.total) == (2, 2, 3, conflict_review.PAGE_SIZE + 3)
    assert client.get("/conflicts/?page=999").context["listing"].page == 2


def test_the_conflict_page_shows_both_sides_with_provenance_and_the_proposal(client, viewer, analyst_user, prospect):
    client.force_login(viewer)
    page = client.get(f"/conflicts/{prospect.pk}/")
    assert page.status_code == 200
    review = page.context["review"]
    assert [(r.name, r.left, r.right, r.proposal) for r in review.rows] == [
        ("sector", "energy", "utilities", "utilities"), ("tier", "2", "1", "1")]
    assert {r.name for r in review.unchanged} >= {"name", "country"}  # the node's other fields, collapsed
    assert review.provenance["graph"]["source"] == "crm" and review.provenance["other"]["source"] == "enrichment"
    assert review.provenance["other"]["confidence"] == 0.7
    html = page.content.decode()
    assert "<details class=\"unchanged\">" in html and "ask an analyst" in html
    assert 'href="/entities/Prospect/acme"' in html
    assert 'name="choice-sector"' not in html  # a viewer sees no decision controls
    assert review.effect.startswith("The embedded text changes")  # sector is embedded for prospects
    assert "/api/v1/" not in html
    client.force_login(analyst_user)
    html = client.get(f"/conflicts/{prospect.pk}/").content.decode()
    assert f"/api/v1/conflicts/{prospect.pk}/resolve" in html  # the API call that accepts the proposal
    assert "&quot;choice&quot;: &quot;merged&quot;" in html


def test_long_text_is_diffed_word_by_word():
    old, new = conflict_review.word_diff("APT29 targets energy firms in Norway with spear-phishing",
                                         "APT29 targets water utilities in Norway with spear-phishing")
    assert ("del", "energy firms ") in old and ("ins", "water utilities ") in new
    assert ("same", "APT29 targets ") in old


def test_resolve_field_by_field_left_right_and_edited(client, analyst_user, prospect, synced_graph, settings):
    settings.CONFLICT_RULES = {"prospect_metadata": "ask_analyst"}
    write_entity("Prospect", "acme", {"country": "SE"}, source="crm")  # not governed by enrichment: no conflict
    Conflict.objects.filter(pk=prospect.pk).update(graph_version=node(synced_graph, "Prospect", "acme").version)
    prospect.refresh_from_db()
    client.force_login(analyst_user)
    data = form(prospect, sector="right", tier="edit")
    data["edit-tier"] = "3"
    response = client.post(f"/conflicts/{prospect.pk}/resolve", data)
    assert response.status_code == 302
    acme = node(synced_graph, "Prospect", "acme")
    assert (acme.properties["sector"], acme.properties["tier"]) == ("utilities", "3")
    prospect.refresh_from_db()
    assert (prospect.status, prospect.resolver, prospect.note) == ("resolved", analyst_user, "checked the registry")
    audit = AuditEntry.objects.get(action="conflict.resolve")
    assert audit.after == {"sector": "utilities", "tier": "3"} and audit.actor == analyst_user


def test_the_proposal_per_field(client, analyst_user, prospect, synced_graph):
    client.force_login(analyst_user)
    assert client.post(f"/conflicts/{prospect.pk}/resolve", form(prospect, sector="left", tier="proposal")).status_code == 302
    acme = node(synced_graph, "Prospect", "acme")
    assert (acme.properties["sector"], acme.properties["tier"]) == ("energy", "1")


@pytest.mark.parametrize(("change", "message"), [
    ({"choice-revenue": "left"}, "'revenue' is not a field of this conflict"),
    ({"edit-revenue": "9"}, "'revenue' is not a field of this conflict"),
    ({"choice-tier": "both"}, "tier: choose left, right, proposal or edit"),
    ({"choice-tier": None}, "choose left, right, proposal or edit for: tier"),
    ({"note": ""}, "a note is required"),
    ({"version": None}, "version is missing"),
    ({"version": "two"}, "version must be the entity version"),
    ({"choice-tier": "edit", "edit-tier": " "}, "tier: type a value"),
])
def test_tampered_forms_are_refused_and_nothing_is_written(client, analyst_user, prospect, synced_graph, change, message):
    before = node(synced_graph, "Prospect", "acme")
    data = form(prospect, sector="right", tier="left")
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    client.force_login(analyst_user)
    response = client.post(f"/conflicts/{prospect.pk}/resolve", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    prospect.refresh_from_db()
    assert prospect.status == "open"
    assert node(synced_graph, "Prospect", "acme").version == before.version
    assert not AuditEntry.objects.filter(action="conflict.resolve").exists()


def test_resolving_a_resolved_conflict_is_409_and_changes_nothing(client, analyst_user, prospect, synced_graph):
    client.force_login(analyst_user)
    assert client.post(f"/conflicts/{prospect.pk}/resolve", form(prospect, sector="right", tier="right")).status_code == 302
    version = node(synced_graph, "Prospect", "acme").version
    again = client.post(f"/conflicts/{prospect.pk}/resolve", form(prospect, sector="left", tier="left"))
    assert again.status_code == 409 and "already resolved by ana-analyst" in again.content.decode()
    assert client.post(f"/conflicts/{prospect.pk}/dismiss", {"note": "dup"}).status_code == 409
    assert node(synced_graph, "Prospect", "acme").version == version
    assert AuditEntry.objects.filter(action__startswith="conflict.").exclude(action="conflict.auto_resolve").count() == 1


def test_a_stale_resolution_shows_the_new_state_and_keeps_choices_where_the_field_did_not_change(
        client, analyst_user, prospect, synced_graph):
    seen = form(prospect, sector="right", tier="edit")
    seen["edit-tier"] = "4"
    # A concurrent write by the source that owns `sector` moves the entity on.
    write_entity("Prospect", "acme", {"sector": "oil and gas"}, source="crm")
    client.force_login(analyst_user)
    response = client.post(f"/conflicts/{prospect.pk}/resolve", seen)
    assert response.status_code == 409
    html = response.content.decode()
    assert "changed since it was shown" in html
    rows = {r.name: r for r in response.context["review"].rows}
    assert rows["sector"].left == "oil and gas" and rows["sector"].moved and rows["sector"].choice == ""
    assert (rows["tier"].choice, rows["tier"].edit) == ("edit", "4")  # kept: tier did not change
    assert response.context["note"] == "checked the registry"
    prospect.refresh_from_db()
    assert prospect.status == "open" and prospect.graph_side["sector"] == "oil and gas"
    assert node(synced_graph, "Prospect", "acme").properties["tier"] == "2"


def test_dismiss_needs_a_note(client, analyst_user, prospect):
    client.force_login(analyst_user)
    response = client.post(f"/conflicts/{prospect.pk}/dismiss", {"note": ""})
    assert response.status_code == 400 and "a note is required" in response.content.decode()
    assert client.post(f"/conflicts/{prospect.pk}/dismiss", {"note": "duplicate source"}).status_code == 302
    prospect.refresh_from_db()
    assert prospect.status == "dismissed"
    assert AuditEntry.objects.get(action="conflict.dismiss").note == "duplicate source"


def test_a_preview_by_get_recomputes_the_resulting_node(client, viewer, prospect):
    client.force_login(viewer)
    page = client.get(f"/conflicts/{prospect.pk}/?choice-sector=left&choice-tier=left")
    review = page.context["review"]
    assert review.preview["sector"] == "energy" and review.effect.startswith("Nothing changes")
    assert client.get(f"/conflicts/{prospect.pk}/?choice-wealth=left").status_code == 400


def test_a_vector_ahead_conflict_keeps_the_graph(client, analyst_user, synced_graph, vectors):
    from sync.conflicts.records import open_conflict

    write_entity("ThreatActor", "apt1", {"name": "APT1", "severity": "high"}, source="misp")
    version = node(synced_graph, "ThreatActor", "apt1").version
    conflict = open_conflict("vector_ahead", "ThreatActor", "apt1", graph_version=version,
                             graph_side={"version": version}, other_side={"version": version + 4})
    client.force_login(analyst_user)
    page = client.get(f"/conflicts/{conflict.pk}/")
    assert page.status_code == 200 and "Keep the graph (rebuild the vector)" in page.content.decode()
    assert 'name="choice-version"' not in page.content.decode()
    response = client.post(f"/conflicts/{conflict.pk}/resolve", {"version": str(version), "note": "graph is truth"})
    assert response.status_code == 302
    conflict.refresh_from_db()
    assert (conflict.status, conflict.resolution) == ("resolved", "graph")


def test_the_preview_keeps_the_list_filter(client, viewer, prospect):
    client.force_login(viewer)
    page = client.get(f"/conflicts/{prospect.pk}/?back=kind%3Dprospect_metadata%26sort%3Dnewest&choice-sector=left")
    assert page.context["selection"].kind == "prospect_metadata" and page.context["selection"].sort == "newest"


def severity_disputes(n, *, graph_source="vendor-a", other_source="vendor-b", prefix="actor"):
    for i in range(n):
        write_entity("ThreatActor", f"{prefix}-{i}{HOSTILE}", {"name": f"Actor {i}", "severity": "low"},
                     source=graph_source, confidence=0.9)
        write_entity("ThreatActor", f"{prefix}-{i}{HOSTILE}", {"severity": "critical"}, source=other_source,
                     confidence=0.3)  # below CONFLICT_MIN_CONFIDENCE: an analyst decides


def test_bulk_resolve_similar_confirms_the_count_and_skips_a_stale_one(client, analyst_user, synced_graph, vectors):
    severity_disputes(3)
    severity_disputes(1, graph_source="vendor-c", prefix="other")  # not similar: another graph source
    open_ = list(Conflict.objects.filter(status="open").order_by("id"))
    assert len(open_) == 4
    first = open_[0]
    client.force_login(analyst_user)
    page = client.get(f"/conflicts/{first.pk}/")
    assert page.context["similar_count"] == 3
    similar = conflict_review.similar(first)
    as_of = timezone.now().isoformat()
    query = "&".join(f"{k}={v}" for k, v in similar.params())
    confirm = client.get(f"/conflicts/bulk/confirm?action=proposal&{query}&as_of={as_of.replace('+', '%2B')}")
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "3 open threat severity conflicts on ThreatActor severity between vendor-a (graph) and vendor-b" in html
    assert "manage.py conflicts --apply proposal --kind threat_severity" in html
    # One of them moves on before the analyst confirms: it is skipped, not forced.
    write_entity("ThreatActor", open_[1].uid, {"description": "renamed"}, source="misp")
    response = client.post("/conflicts/bulk/proposal", {**dict(similar.params()), "as_of": as_of, "note": "vendor-b wins"})
    assert response.status_code == 302
    statuses = {c.uid: Conflict.objects.get(pk=c.pk).status for c in open_}
    assert list(statuses.values()) == ["resolved", "open", "resolved", "open"]
    assert node(synced_graph, "ThreatActor", open_[0].uid).properties["severity"] == "critical"
    assert AuditEntry.objects.filter(action="conflict.resolve", note="vendor-b wins").count() == 2
    message = [str(m) for m in response.wsgi_request._messages][0]
    assert "Resolved 2 of 3 conflicts; skipped 1 whose entity changed" in message


def test_bulk_actions_refuse_tampered_requests(client, analyst_user, synced_graph, vectors):
    severity_disputes(2)
    client.force_login(analyst_user)
    as_of = timezone.now().isoformat()
    assert client.post("/conflicts/bulk/dismiss", {"note": "x"}).status_code == 400  # no snapshot time
    assert client.post("/conflicts/bulk/dismiss", {"as_of": as_of}).status_code == 400  # no note
    assert client.post("/conflicts/bulk/explode", {"as_of": as_of, "note": "x"}).status_code == 400
    assert client.get("/conflicts/bulk/confirm?action=proposal").status_code == 400
    assert Conflict.objects.filter(status="open").count() == 2
    later = Conflict.objects.create(kind="threat_severity", label="ThreatActor", uid="late",
                                    graph_side={"severity": "high"}, other_side={"severity": "low"},
                                    created_at=timezone.now() + timedelta(seconds=5))
    assert client.post("/conflicts/bulk/dismiss", {"as_of": as_of, "note": "noise"}).status_code == 302
    assert Conflict.objects.filter(status="dismissed").count() == 2
    later.refresh_from_db()
    assert later.status == "open"  # opened after the snapshot: left alone


def test_the_command_lists_and_applies_like_the_page(synced_graph, vectors, analyst_user):
    severity_disputes(2)
    out = io.StringIO()
    call_command("conflicts", "--kind", "threat_severity", stdout=out)
    assert "2 open conflicts" in out.getvalue()
    out = io.StringIO()
    call_command("conflicts", "--apply", "left", "--kind", "threat_severity", "--note", "keep ours",
                 "--user", analyst_user.username, stdout=out)
    assert "Resolved 2 of 2 conflicts" in out.getvalue()
    assert AuditEntry.objects.filter(action="conflict.resolve", actor=analyst_user, note="keep ours").count() == 2
