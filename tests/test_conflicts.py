"""Conflicts from the write path, and applying resolutions: idempotent, refused when stale, audited."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from sync.conflicts import records as conflicts
from sync.conflicts import resolve as resolution
from sync.models import AuditEntry, Conflict, SyncEvent
from sync.writes import write_entity

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def analyst(db):
    return User.objects.create_user("analyst")


def entity(graph, label, uid):
    return graph.get_entities([(label, uid)])[(label, uid)]


def test_a_rule_settles_a_severity_dispute_on_write(synced_graph, vectors):
    write_entity("ThreatActor", "apt29", {"name": "APT29", "severity": "medium"}, source="misp")
    write_entity("ThreatActor", "apt29", {"severity": "critical"}, source="otx")
    write_entity("ThreatActor", "apt29", {"severity": "low"}, source="blog")
    assert entity(synced_graph, "ThreatActor", "apt29").properties["severity"] == "critical"
    settled = Conflict.objects.filter(status="auto_resolved").order_by("id")
    assert [(c.kind, c.rule, c.resolved_values) for c in settled] == [
        ("threat_severity", "highest_severity", {"severity": "critical"}),
        ("threat_severity", "highest_severity", {"severity": "critical"}),
    ]
    assert AuditEntry.objects.filter(action="conflict.auto_resolve").count() == 2


def test_an_ask_an_analyst_rule_leaves_the_conflict_open_with_its_proposal(synced_graph, vectors, settings):
    settings.CONFLICT_RULES = {"threat_severity": "last_write_wins"}
    write_entity("KEV", "CVE-2021-44228", {"cve_id": "CVE-2021-44228", "severity": "critical"}, source="cisa-kev")
    write_entity("KEV", "CVE-2021-44228", {"severity": "medium", "notes": "vendor says mitigated"}, source="blog")
    kev = entity(synced_graph, "KEV", "CVE-2021-44228")
    assert kev.properties["severity"] == "critical"  # kept until an analyst decides
    assert kev.properties["notes"] == "vendor says mitigated"  # undisputed fields are written
    conflict = Conflict.objects.get(status="open")
    assert (conflict.kind, conflict.rule, conflict.proposal) == ("threat_severity", "last_write_wins",
                                                                 {"severity": "medium"})
    assert "downgrade the severity of a CISA KEV entry" in conflict.explanation
    assert conflict.graph_version == kev.version
    # A second disagreement refreshes the same open conflict instead of opening another.
    write_entity("KEV", "CVE-2021-44228", {"severity": "low"}, source="blog")
    assert Conflict.objects.filter(status="open").count() == 1


@pytest.fixture
def open_conflict(synced_graph, vectors, settings):
    settings.CONFLICT_RULES = {"prospect_metadata": "ask_analyst"}
    write_entity("Prospect", "acme", {"name": "Acme Energy", "sector": "energy", "tier": "2"}, source="crm")
    write_entity("Prospect", "acme", {"sector": "utilities", "tier": "1"}, source="enrichment")
    return Conflict.objects.get(status="open")


def test_a_resolution_is_written_as_a_new_version_and_propagated(open_conflict, synced_graph, analyst):
    before = entity(synced_graph, "Prospect", "acme").version
    SyncEvent.objects.all().delete()
    result = resolution.resolve(open_conflict.pk, choice="fields", actor=analyst, note="checked the registry",
                               field_choices={"sector": "other", "tier": "graph"}, seen_version=before)
    assert result.changed and result.version == before + 1
    acme = entity(synced_graph, "Prospect", "acme")
    assert (acme.properties["sector"], acme.properties["tier"]) == ("utilities", "2")
    assert acme.properties["source"] == "analyst:analyst"
    assert SyncEvent.objects.filter(label="Prospect", uid="acme", status="queued").exists()
    audit = AuditEntry.objects.get(action="conflict.resolve")
    assert (audit.actor, audit.before, audit.after, audit.note) == (
        analyst, {"sector": "energy", "tier": "2"}, {"sector": "utilities", "tier": "2"}, "checked the registry")
    open_conflict.refresh_from_db()
    assert (open_conflict.status, open_conflict.resolver, open_conflict.resolution) == ("resolved", analyst, "fields")


def test_resolving_twice_changes_nothing_the_second_time(open_conflict, synced_graph, analyst):
    seen = open_conflict.graph_version
    first = resolution.resolve(open_conflict.pk, choice="other", actor=analyst, seen_version=seen)
    version = entity(synced_graph, "Prospect", "acme").version
    second = resolution.resolve(open_conflict.pk, choice="graph", actor=analyst, seen_version=seen)
    assert first.changed and not second.changed
    assert "already resolved by analyst" in second.message
    assert entity(synced_graph, "Prospect", "acme").version == version
    assert AuditEntry.objects.filter(action="conflict.resolve").count() == 1


def test_a_conflict_whose_entity_moved_on_is_refused(open_conflict, synced_graph, analyst):
    shown = open_conflict.graph_version
    write_entity("Prospect", "acme", {"description": "updated profile"}, source="crm")
    with pytest.raises(resolution.StaleConflict, match=rf"changed since it was shown \(version {shown}, now at version {shown + 1}\)"):
        resolution.resolve(open_conflict.pk, choice="other", actor=analyst, seen_version=shown)
    open_conflict.refresh_from_db()
    assert open_conflict.status == "open" and open_conflict.graph_version == shown + 1  # shows the new state
    assert not AuditEntry.objects.filter(action="conflict.resolve").exists()


def test_analyst_edits_are_limited_to_the_conflicts_fields(open_conflict, analyst):
    with pytest.raises(conflicts.ConflictError, match="only this conflict's fields"):
        resolution.resolve(open_conflict.pk, choice="graph", actor=analyst, edits={"contact_email": "x@y.example"})
    with pytest.raises(conflicts.ConflictError, match="choose a side for: tier"):
        resolution.resolve(open_conflict.pk, choice="fields", actor=analyst, field_choices={"sector": "graph"})
    result = resolution.resolve(open_conflict.pk, choice="merged", actor=analyst, edits={"tier": "3"},
                               seen_version=open_conflict.graph_version)
    assert result.conflict.resolved_values == {"sector": "utilities", "tier": "3"}


def test_dismissing_is_idempotent_and_audited(open_conflict, analyst):
    assert resolution.dismiss(open_conflict.pk, actor=analyst, note="noise").changed
    assert not resolution.dismiss(open_conflict.pk, actor=analyst).changed
    assert AuditEntry.objects.filter(action="conflict.dismiss").count() == 1


def test_a_value_a_rule_kept_stays_defended_against_the_source_it_overruled(synced_graph, vectors):
    write_entity("KEV", "CVE-2024-3400", {"cve_id": "CVE-2024-3400", "severity": "critical"}, source="cisa-kev")
    write_entity("KEV", "CVE-2024-3400", {"severity": "low"}, source="blog")  # kept: highest severity
    write_entity("KEV", "CVE-2024-3400", {"severity": "low"}, source="blog")  # the same source again
    kev = entity(synced_graph, "KEV", "CVE-2024-3400")
    assert kev.properties["severity"] == "critical"
    assert kev.properties["severity_source"] == "cisa-kev" and kev.properties["source"] == "blog"
    assert Conflict.objects.filter(status="auto_resolved").count() == 2
    write_entity("KEV", "CVE-2024-3400", {"severity": "high"}, source="cisa-kev")  # the owner may update it
    assert entity(synced_graph, "KEV", "CVE-2024-3400").properties["severity"] == "high"
