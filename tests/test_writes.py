"""Write paths: async write-through and the synchronous dual-write saga with compensation."""

from __future__ import annotations

import pytest

from sync.ids import vector_id
from sync.models import SagaLog, SyncEvent
from sync.stores import use_vector_store
from sync.writes import CompensationFailed, SyncWriteError, write_entity
from tests.faults.inject import FailingWrites

pytestmark = pytest.mark.django_db(transaction=True)

KEV = {"cve_id": "CVE-2021-44228", "vendor_project": "Apache", "product": "Log4j2",
       "vulnerability_name": "Apache Log4j2 Remote Code Execution Vulnerability",
       "short_description": "JNDI features do not protect against attacker-controlled LDAP endpoints.",
       "required_action": "Apply updates per vendor instructions.", "severity": "critical"}


def node(graph, label, uid):
    return graph.get_entities([(label, uid)]).get((label, uid))


def test_write_through_commits_the_graph_and_enqueues(synced_graph, vectors):
    outcome = write_entity("ThreatActor", "apt41", {"name": "APT41", "description": "Double Dragon"},
                           source="analyst")
    assert (outcome.mode, outcome.vector_outcome, outcome.entity.version) == ("write_through", "queued", 1)
    event = SyncEvent.objects.get()
    assert (event.label, event.uid, event.version, event.source) == ("ThreatActor", "apt41", 1, "write")
    assert vectors.stats().total == 0  # the caller waited only for Neo4j


def test_dual_write_embeds_in_the_call(synced_graph, vectors):
    outcome = write_entity("KEV", "CVE-2021-44228", KEV, source="cisa-kev", confidence=1.0)
    assert outcome.mode == "dual_write" and outcome.vector_outcome == "upserted"
    assert outcome.saga.status == SagaLog.Status.COMMITTED
    stored = vectors.fetch([vector_id("KEV", "CVE-2021-44228")])
    assert stored[vector_id("KEV", "CVE-2021-44228")].metadata["version"] == 1


def test_a_failed_vector_write_deletes_a_created_node(synced_graph, vectors):
    use_vector_store(FailingWrites(vectors))
    with pytest.raises(SyncWriteError, match="graph change was undone"):
        write_entity("KEV", "CVE-2023-34362", KEV | {"cve_id": "CVE-2023-34362"}, source="cisa-kev")
    assert node(synced_graph, "KEV", "CVE-2023-34362") is None
    saga = SagaLog.objects.get()
    assert saga.status == SagaLog.Status.COMPENSATED
    assert [s["step"] for s in saga.steps] == ["graph_write", "vector_write", "compensate"]


def test_a_failed_vector_write_restores_the_previous_state(synced_graph, vectors):
    write_entity("KEV", "CVE-2021-44228", KEV, source="cisa-kev")
    use_vector_store(FailingWrites(vectors))
    with pytest.raises(SyncWriteError):
        write_entity("KEV", "CVE-2021-44228", {"severity": "low", "notes": "downgraded"}, source="other")
    entity = node(synced_graph, "KEV", "CVE-2021-44228")
    assert entity.version == 3  # v1 content, restored as a new version: versions never go back
    assert entity.properties["severity"] == "critical" and "notes" not in entity.properties
    assert entity.properties["source"] == "cisa-kev"
    assert SagaLog.objects.latest("id").status == SagaLog.Status.COMPENSATED
    # The normal path re-applies the restored state, in case the failed write landed after all.
    assert SyncEvent.objects.get(status="queued").source == "compensation"


def test_a_compensation_that_fails_is_recorded_and_raised(synced_graph, vectors, graph):
    def someone_else_writes():
        graph.write_entity("KEV", "CVE-2021-44228", {"notes": "concurrent edit"}, source="other-tool")

    write_entity("KEV", "CVE-2021-44228", KEV, source="cisa-kev")
    use_vector_store(FailingWrites(vectors, before=someone_else_writes))
    with pytest.raises(CompensationFailed, match="could not be restored"):
        write_entity("KEV", "CVE-2021-44228", {"severity": "high"}, source="cisa-kev")
    saga = SagaLog.objects.latest("id")
    assert saga.status == SagaLog.Status.COMPENSATION_FAILED
    assert saga.steps[-1]["step"] == "compensate" and not saga.steps[-1]["ok"]
    # The concurrent edit was not clobbered by a blind restore.
    assert node(graph, "KEV", "CVE-2021-44228").properties["notes"] == "concurrent edit"


def test_an_optimistic_conflict_aborts_before_anything_is_written(synced_graph, vectors):
    from sync.stores.base import VersionConflict

    write_entity("KEV", "CVE-2021-44228", KEV, source="cisa-kev")
    with pytest.raises(VersionConflict):
        write_entity("KEV", "CVE-2021-44228", {"severity": "low"}, source="x", expected_version=7)
    assert SagaLog.objects.latest("id").status == SagaLog.Status.ABORTED
