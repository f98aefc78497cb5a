"""An analyst's decision on a conflict is whole or not made, whatever interrupts it (issue 18,
defect 8): a SystemExit, a KeyboardInterrupt or an error injected at each step of a resolution
leaves either the conflict resolved, the graph written and the decision audited, or the conflict
open, the graph as it was and nothing audited — never "resolved" without the write or the audit
entry. And the decision can then be made again."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from sync.conflicts import resolve as resolution
from sync.models import AuditEntry, Conflict
from sync.writes import write_entity

pytestmark = pytest.mark.django_db(transaction=True)

INTERRUPTIONS = [KeyboardInterrupt, SystemExit, RuntimeError]


@pytest.fixture
def analyst(db):
    return User.objects.create_user("analyst")


@pytest.fixture
def prospect(synced_graph, vectors, settings):
    """An open prospect_metadata conflict (write-through: the vector follows through the queue)."""
    settings.CONFLICT_RULES = {"prospect_metadata": "ask_analyst"}
    write_entity("Prospect", "acme", {"name": "Acme Energy", "sector": "energy", "tier": "2"}, source="crm")
    write_entity("Prospect", "acme", {"sector": "utilities", "tier": "1"}, source="enrichment")
    return Conflict.objects.get(status="open")


@pytest.fixture
def kev(synced_graph, vectors, settings):
    """An open threat_severity conflict on a KEV entry (dual-write: the vector in the same call)."""
    settings.CONFLICT_RULES = {"threat_severity": "ask_analyst"}
    write_entity("KEV", "CVE-2024-3400", {"cve_id": "CVE-2024-3400", "severity": "critical"}, source="cisa-kev",
                 defer_vectors=True)
    write_entity("KEV", "CVE-2024-3400", {"severity": "low"}, source="blog", defer_vectors=True)
    return Conflict.objects.get(status="open")


def node(graph, conflict):
    return graph.get_entities([(conflict.label, conflict.uid)])[(conflict.label, conflict.uid)]


def interrupt(monkeypatch, target: str, exc: type[BaseException]) -> None:
    """Make `target` (a dotted attribute) raise `exc` the first time it is called."""
    module_path, _, attribute = target.rpartition(".")
    module = __import__(module_path, fromlist=[attribute])
    real = getattr(module, attribute)
    calls = []

    def fake(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise exc("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attribute, fake)


# (where, what is patched, is the decision made when it is interrupted there?)
STEPS = [
    ("before the graph write", "sync.conflicts.resolve.write_entity", False),
    ("after Neo4j committed, before the write returned", "sync.writes.enqueue_entity", False),
    ("marking the conflict resolved", "sync.conflicts.resolve.closed", False),
    ("after the decision was recorded", "sync.conflicts.resolve.Resolution", True),
]


def assert_whole_or_nothing(graph, conflict, before: dict, made: bool) -> None:
    conflict.refresh_from_db()
    now = node(graph, conflict)
    audited = AuditEntry.objects.filter(action="conflict.resolve", target=f"{conflict.label}:{conflict.uid}").count()
    if made:
        assert conflict.status == "resolved" and audited == 1
        assert {k: now.properties.get(k) for k in conflict.resolved_values} == conflict.resolved_values
    else:
        assert conflict.status == "open" and conflict.resolved_values is None and audited == 0
        assert {k: now.properties.get(k) for k in before} == before


@pytest.mark.parametrize("exc", INTERRUPTIONS, ids=lambda e: e.__name__)
@pytest.mark.parametrize(("where", "target", "made"), STEPS, ids=[s[0] for s in STEPS])
def test_an_interrupted_resolution_is_whole_or_not_made(prospect, synced_graph, analyst, monkeypatch, where,
                                                        target, made, exc):
    before = {"sector": "energy", "tier": "2"}
    interrupt(monkeypatch, target, exc)
    with pytest.raises(exc, match="injected"):
        resolution.resolve(prospect.pk, choice="other", actor=analyst, note="registry",
                           seen_version=prospect.graph_version)
    assert_whole_or_nothing(synced_graph, prospect, before, made)
    if made:
        return
    # Not made: it can be made now, as for any conflict whose entity moved (review, then resolve).
    prospect.refresh_from_db()
    seen = node(synced_graph, prospect).version
    result = resolution.resolve(prospect.pk, choice="other", actor=analyst, note="registry", seen_version=seen)
    assert result.changed
    assert_whole_or_nothing(synced_graph, prospect, before, True)
    assert node(synced_graph, prospect).properties["sector"] == "utilities"


@pytest.mark.parametrize("exc", INTERRUPTIONS, ids=lambda e: e.__name__)
def test_an_interruption_while_auditing_leaves_no_unaudited_decision(prospect, synced_graph, analyst,
                                                                     monkeypatch, exc):
    real = AuditEntry.record.__func__

    def record(cls, actor, action, *args, **kwargs):
        if action == "conflict.resolve":
            raise exc("injected")
        return real(cls, actor, action, *args, **kwargs)

    monkeypatch.setattr(AuditEntry, "record", classmethod(record))
    with pytest.raises(exc, match="injected"):
        resolution.resolve(prospect.pk, choice="other", actor=analyst, note="registry",
                           seen_version=prospect.graph_version)
    assert_whole_or_nothing(synced_graph, prospect, {"sector": "energy", "tier": "2"}, made=False)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
def test_an_interrupted_dual_write_resolution_is_not_made(kev, synced_graph, analyst, monkeypatch, exc):
    """The vector write of a KEV is interrupted: the saga puts the node back, and so the
    decision is not made either."""
    interrupt(monkeypatch, "sync.writes.apply_now", exc)
    with pytest.raises(exc, match="injected"):
        resolution.resolve(kev.pk, choice="other", actor=analyst, note="vendor advisory",
                           seen_version=kev.graph_version)
    assert_whole_or_nothing(synced_graph, kev, {"severity": "critical"}, made=False)


def test_a_conflict_closed_while_the_graph_was_written_keeps_the_first_decision(prospect, synced_graph,
                                                                                analyst, monkeypatch):
    """Two analysts at once: the one who recorded first stands, the other's write is undone."""
    real = resolution.write_entity

    def write_while_someone_dismisses(*args, **kwargs):
        outcome = real(*args, **kwargs)
        resolution.dismiss(prospect.pk, actor=analyst, note="duplicate")
        return outcome

    monkeypatch.setattr(resolution, "write_entity", write_while_someone_dismisses)
    result = resolution.resolve(prospect.pk, choice="other", actor=analyst, note="registry",
                                seen_version=prospect.graph_version)
    assert not result.changed and "already dismissed" in result.message
    prospect.refresh_from_db()
    assert prospect.status == "dismissed"
    assert node(synced_graph, prospect).properties["sector"] == "energy"
    assert not AuditEntry.objects.filter(action="conflict.resolve").exists()
