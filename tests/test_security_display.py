"""What the dashboard shows of a graph node is decided by the policy, not by property names
(issue 18, defect 4): a label that never syncs, and a field outside a synced label's display
allow-list (text fields, metadata allow-list, the engine's own keys), are "withheld by policy" on
the entity page and its timeline, in neighbours, search hits, conflicts, the audit log, its CSV
export and the JSON API — whatever the field is called."""

from __future__ import annotations

import json
import string

import pytest
from django.test import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard import tokens
from sync.embedding import get_embedder
from sync.ids import vector_id
from sync.models import AuditEntry, Conflict
from sync.policy import POLICY, WITHHELD, is_withheld, may_show, policy_for, shown_properties
from sync.policy.display import ENGINE_DISPLAY_KEYS, shown_fields
from sync.stores.base import VectorRecord
from tests.leaks import shown

pytestmark = pytest.mark.django_db

# Names the old guard (is_sensitive_key) let through, holding what they say.
SENSITIVE = {"amount": 125000, "value": 98000.5, "price": 7331.25, "balance": -312.75, "mobile": "+44 7700 900123",
             "dob": "1984-03-09", "tax_id": "GB123456789", "account_number": "31926819", "stage": "negotiation",
             "currency": "EUR", "full_name": "Jane Roe", "job_title": "CISO", "internal_memo": "renewal at risk"}
MARKERS = [str(v) for v in SENSITIVE.values()]


def shows_none(page: str, values=MARKERS) -> list[str]:
    return shown(page, values)


@pytest.fixture
def viewer_client(viewer):
    client = Client()
    client.force_login(viewer)
    return client


def test_the_display_allow_list_is_the_policys():
    prospect = shown_fields("Prospect")
    assert {"name", "sector", "description", "public_profile", "uid", "version", "sector_source"} <= prospect
    assert not {"revenue", "amount", "contact_email", "notes"} & prospect
    for label in ("Contact", "Deal", "Account", "NobodyNamedThis"):
        assert shown_fields(label) == frozenset(ENGINE_DISPLAY_KEYS)
    assert shown_properties("Deal", {"uid": "d-1", "amount": 5}) == {"uid": "d-1", "amount": WITHHELD}
    assert is_withheld(WITHHELD) and not is_withheld("withheld by policy")


@settings(max_examples=60)
@given(label=st.sampled_from([*POLICY, "Invoice"]),
       name=st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=24))
def test_a_field_is_shown_only_when_the_policy_lets_it(label, name):
    policy = policy_for(label)
    listed = name in ENGINE_DISPLAY_KEYS or (policy.synced and (
        name in policy.text_property_names or name in policy.metadata_fields
        or name.removesuffix("_source") in (*policy.text_property_names, *policy.metadata_fields)))
    assert may_show(label, name) == listed


def test_a_deal_page_shows_no_amount_currency_or_stage(viewer_client, graph, vectors):
    graph.write_entity("Deal", "d-1", {k: SENSITIVE[k] for k in ("amount", "currency", "stage")}, source="crm")
    page = viewer_client.get("/entities/Deal/d-1").content.decode()
    assert shows_none(page) == [] and page.count("withheld by policy") == 3
    assert "never synced" in page


def test_a_contact_page_shows_no_name_or_title(viewer_client, graph, vectors):
    graph.write_entity("Contact", "c-1", {"full_name": "Jane Roe", "job_title": "CISO", "name": "Jane Roe",
                                          "title": "CISO"}, source="crm")
    page = viewer_client.get("/entities/Contact/c-1").content.decode()
    assert "Jane Roe" not in page and "CISO" not in page


def test_fields_the_name_guard_missed_are_withheld_on_a_synced_label(viewer_client, graph, vectors):
    graph.write_entity("Prospect", "acme", {"name": "Acme Energy", "sector": "energy", **SENSITIVE}, source="crm")
    page = viewer_client.get("/entities/Prospect/acme").content.decode()
    assert shows_none(page) == []
    assert "Acme Energy" in page and "energy" in page  # the allow-listed fields are shown


def test_a_neighbours_name_follows_its_own_labels_policy(viewer_client, graph, vectors):
    graph.write_entity("Prospect", "acme", {"name": "Acme Energy"}, source="crm")
    graph.write_entity("Contact", "c-1", {"name": "Jane Roe"}, source="crm")
    graph.write_entity("Malware", "sunburst", {"name": "SUNBURST"}, source="t")
    graph.import_relationships("WORKS_AT", [("Contact", "c-1", "Prospect", "acme", {})])
    graph.import_relationships("MENTIONS", [("Prospect", "acme", "Malware", "sunburst", {})])
    page = viewer_client.get("/entities/Prospect/acme").content.decode()
    assert 'href="/entities/Contact/c-1"' in page and "Jane Roe" not in page
    assert "SUNBURST" in page


def test_the_timeline_audit_page_csv_and_api_withhold_a_nodes_values(viewer, viewer_client, graph, vectors):
    graph.write_entity("Deal", "d-1", {"amount": 125000}, source="crm")
    AuditEntry.record("rules", "conflict.auto_resolve", "Deal:d-1", before={"amount": 125000, "version": 3},
                      after={"amount": 98000.5, "version": 4}, note="most_recent")
    AuditEntry.record("rules", "conflict.auto_resolve", "Prospect:acme", before={"sector": "energy"},
                      after={"sector": "utilities"}, note="most_recent")
    pages = {
        "timeline": viewer_client.get("/entities/Deal/d-1?kind=analyst").content.decode(),
        "audit": viewer_client.get("/audit/").content.decode(),
        "csv": b"".join(viewer_client.get("/audit/export.csv").streaming_content).decode(),
        "api": Client().get("/api/v1/audit", HTTP_AUTHORIZATION=f"Bearer {tokens.create(viewer, 'read')[1]}")
        .content.decode(),
    }
    for where, page in pages.items():
        assert shows_none(page, ["125000", "98000.5"]) == [], where
    assert "withheld by policy" in pages["audit"] and "utilities" in pages["audit"]  # a prospect's sector is shown
    entries = json.loads(pages["api"])["entries"]
    deal = next(e for e in entries if e["target"] == "Deal:d-1")
    assert deal["after"] == {"amount": "withheld by policy", "version": 4}


def test_a_conflict_on_a_withheld_field_shows_neither_side(client, analyst_user, graph, vectors):
    graph.write_entity("Deal", "d-1", {"amount": 125000}, source="crm")
    conflict = Conflict.objects.create(kind="prospect_metadata", label="Deal", uid="d-1", graph_version=1,
                                       graph_side={"amount": 125000}, other_side={"amount": 98000.5},
                                       proposal={"amount": 98000.5})
    client.force_login(analyst_user)
    page = client.get(f"/conflicts/{conflict.pk}/").content.decode()
    assert shows_none(page, ["125000", "98000.5"]) == [] and "withheld by policy" in page
    # The API's answer to a stale resolution names the graph's side: withheld as well.
    graph.write_entity("Deal", "d-1", {"amount": 130000}, source="crm")
    token = tokens.create(analyst_user, "act")[1]
    response = Client().post(f"/api/v1/conflicts/{conflict.pk}/resolve", {"choice": "graph", "note": "n"},
                             content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 409
    assert response.json()["graph_side"] == {"amount": "withheld by policy"}
    assert shown(response.content.decode(), ["130000"]) == []


def test_the_admin_site_and_the_conflicts_command_withhold_what_the_dashboard_does(client, admin_user):
    # The admin role reaches Django's admin site: its read-only engine pages show a node's values
    # through the same allow-list, and so does `manage.py conflicts` (nothing revealed elsewhere).
    from io import StringIO

    from django.core.management import call_command

    conflict = Conflict.objects.create(kind="prospect_metadata", label="Prospect", uid="acme", graph_version=1,
                                       graph_side={"revenue": 125000, "sector": "energy"},
                                       other_side={"revenue": 98000.5, "sector": "utilities"},
                                       proposal={"revenue": 98000.5}, resolved_values={"revenue": 98000.5})
    entry = AuditEntry.record("rules", "conflict.auto_resolve", "Prospect:acme", before={"revenue": 125000},
                              after={"revenue": 98000.5, "sector": "utilities"}, note="most_recent")
    client.force_login(admin_user)
    pages = {where: client.get(url) for where, url in (
        ("conflict", f"/admin/sync/conflict/{conflict.pk}/change/"),
        ("audit entry", f"/admin/sync/auditentry/{entry.pk}/change/"))}
    listing = StringIO()
    call_command("conflicts", "--all", stdout=listing)
    for where, response in pages.items():
        assert response.status_code == 200, where
        page = response.content.decode()
        assert shows_none(page, ["125000", "98000.5"]) == [] and "withheld by policy" in page, where
        assert "utilities" in page, where  # a prospect's sector is the policy's to show
    assert shows_none(listing.getvalue(), ["125000", "98000.5"]) == [] and "utilities" in listing.getvalue()


def test_a_never_synced_vector_found_by_search_shows_no_text_or_name(viewer_client, graph, vectors):
    text = "Jane Roe, CISO at Acme Energy, mobile +44 7700 900123"
    graph.write_entity("Contact", "c-1", {"name": "Jane Roe"}, source="crm")
    vectors.upsert([VectorRecord(vector_id("Contact", "c-1"), get_embedder().encode([text])[0].tolist(),
                                 {"label": "Contact", "uid": "c-1", "version": 1, "text": text, "name": "Jane Roe"})])
    page = viewer_client.get("/search/", {"q": "CISO at Acme Energy"}).content.decode()
    # Fragments as whole tokens: "7700" is also in a timestamp's microseconds (".877000").
    assert "Contact:c-1" in page and shown(page, ["Jane Roe", "7700", "900123"]) == []
    assert "withheld by policy" in page
    entity = viewer_client.get("/entities/Contact/c-1").content.decode()  # the drifted vector's page
    assert shown(entity, ["Jane Roe", "7700", "900123"]) == []


@settings(max_examples=20)
@given(name=st.text(string.ascii_lowercase + "_", min_size=2, max_size=20).filter(
           lambda n: not may_show("Prospect", n) and n not in ("uid", "version", "updated_at")),
       marker=st.integers(10**9, 10**12))
def test_any_field_outside_the_allow_list_is_withheld_whatever_its_name(viewer_client, graph, vectors, name, marker):
    graph.write_entity("Prospect", "acme", {"name": "Acme Energy", name: f"secret-{marker}"}, source="crm")
    page = viewer_client.get("/entities/Prospect/acme").content.decode()
    assert f"secret-{marker}" not in page
