"""Demo activity against the real test Neo4j: what change capture finds, what the rules make of it."""

from io import StringIO

import pytest
from django.core.management import call_command

from sync import capture
from sync.demo.activity import OBSERVED, Activity
from sync.models import Conflict, SyncEvent

pytestmark = pytest.mark.django_db


def cypher(graph, query, **params):
    records, _, _ = graph.driver.execute_query(query, params, database_=graph.database)
    return [r.data() for r in records]


@pytest.fixture
def small_graph(synced_graph):
    cypher(synced_graph, "CREATE (:ThreatActor {uid: 'apt-x', name: 'APT X', description: 'Spear-phishing crew.', "
                         "severity: 'medium'}), (:Malware {uid: 'm1', name: 'M1', description: 'Loader.'}), "
                         "(:Technique {uid: 't1', name: 'Phishing', description: 'Sends e-mail.'}), "
                         "(:Artifact {uid: 'a1', title: 'Brief', summary: 'About X', published: '2025-01-01'}), "
                         "(:Vulnerability {uid: 'CVE-2024-1', cve_id: 'CVE-2024-1', title: 'Bug', cvss_score: 7.5}), "
                         "(:KEV {uid: 'CVE-2024-1', cve_id: 'CVE-2024-1', vendor_project: 'Acme', product: 'Gate', "
                         "cwes: ['CWE-78']})")
    cypher(synced_graph, "CREATE (i:ThreatIntel {uid: 'ti-1', title: 'Beaconing', summary: 'C2 seen'}) "
                         "WITH i MATCH (a:ThreatActor {uid: 'apt-x'}) CREATE (i)-[:ATTRIBUTED_TO {basis: 'infra'}]->(a)")
    capture.poll_once("test", overlap=0)
    SyncEvent.objects.all().delete()
    return synced_graph


def activity(**kwargs):
    return Activity(rate=6, seed=7, say=lambda line: None, **kwargs)


def test_foreign_edits_are_found_by_change_capture(small_graph):
    act = activity()
    for _ in range(6):
        act.edit()
    assert act.counts.text_edits + act.counts.metadata_edits == 6 and not act.counts.errors
    result = capture.poll_once("test", overlap=0)
    assert result.enqueued >= 1
    described = cypher(small_graph, "MATCH (n) WHERE n.description CONTAINS $o RETURN n.description AS d", o=OBSERVED)
    for row in described:  # edited again and again, the sentence is replaced, never piled up
        assert row["d"].count(OBSERVED) == 1


def test_a_new_kev_is_high_priority_work_with_its_vulnerability(small_graph):
    act = activity()
    act.new_kev()
    act.new_kev()
    kevs = cypher(small_graph, "MATCH (k:KEV)-[:LISTS]->(v:Vulnerability) WHERE k.uid STARTS WITH 'CVE-' AND "
                               "k.short_description STARTS WITH 'Simulated entry' RETURN k.uid AS uid ORDER BY uid")
    assert len(kevs) == 2 and kevs[0]["uid"] != kevs[1]["uid"]
    capture.poll_once("test", overlap=0)
    assert SyncEvent.objects.filter(label="KEV", uid=kevs[0]["uid"], priority=0).exists()


def test_a_deleted_item_comes_back_with_its_relationships(small_graph):
    act = activity()
    act.delete()
    assert not cypher(small_graph, "MATCH (i:ThreatIntel {uid: 'ti-1'}) RETURN i")
    assert capture.poll_once("test", overlap=0).enqueued == 1
    assert SyncEvent.objects.get(uid="ti-1").operation == "delete"
    act.recreate(act.deleted[0])
    rows = cypher(small_graph, "MATCH (i:ThreatIntel {uid: 'ti-1'})-[r:ATTRIBUTED_TO]->(a {uid: 'apt-x'}) "
                               "RETURN i.title AS title, r.basis AS basis")
    assert rows == [{"title": "Beaconing", "basis": "infra"}]


def test_disagreeing_sources_go_through_the_rules(small_graph, vectors):
    act = activity()
    for _ in range(8):
        act.dispute()
    assert act.counts.disputes == 8 and not act.counts.errors
    assert Conflict.objects.filter(sources__other__source__startswith="demo-activity").exists()
    assert Conflict.objects.exclude(status="open").exists()  # most are settled by a rule


def test_a_fresh_demo_has_conflicts_some_settled_by_the_rules_some_for_an_analyst(small_graph, vectors):
    from sync.demo.activity import first_conflicts
    from sync.models import AuditEntry

    done = first_conflicts()
    assert done.disputes == 12 and not done.errors
    open_ = Conflict.objects.filter(status="open")
    assert {c.kind for c in open_} == {"threat_severity", "vulnerability_score"}
    assert all(c.proposal and "confidence 0.3 is below" in c.explanation for c in open_)
    assert Conflict.objects.filter(status="auto_resolved").exists()
    # Made by the write path: the rules' decisions are audited and the graph carries the sources.
    assert AuditEntry.objects.filter(action="conflict.auto_resolve").exists()
    actor = small_graph.get_entities([("ThreatActor", "apt-x")])[("ThreatActor", "apt-x")]
    assert actor.properties["severity_source"].startswith("demo-activity:")


def test_the_command_runs_for_a_while_and_leaves_the_graph_whole(small_graph, vectors):
    out = StringIO()
    call_command("simulate", "--rate", "120", "--seconds", "2", "--seed", "1", stdout=out)
    assert "foreign edits a minute" in out.getvalue()
    assert "0 errors" in out.getvalue()
    assert cypher(small_graph, "MATCH (i:ThreatIntel {uid: 'ti-1'}) RETURN count(i) AS n") == [{"n": 1}]


def test_the_start_up_summary_of_the_first_conflicts_adds_up(small_graph, vectors):
    """`load_demo`'s line about its first conflicts: the disagreements it counts are the ones its
    writes recorded, each settled by a rule or open, so the parts add up to the whole (it once
    printed "12 disagreements: 8 settled by the rules, 8 open")."""
    import re

    from sync.management.commands.load_demo import Command

    cypher(small_graph, "UNWIND range(2, 7) AS n CREATE (:ThreatActor {uid: 'apt-' + n, name: 'APT ' + n, "
                        "description: 'Crew ' + n, severity: 'medium'}), "
                        "(:Vulnerability {uid: 'CVE-2024-' + n, cve_id: 'CVE-2024-' + n, title: 'Bug ' + n, "
                        "cvss_score: 7.5})")
    out = StringIO()
    Command(stdout=out)._first_conflicts()
    line = out.getvalue().strip()
    found = re.fullmatch(r"demo: (\d+) disagreements between sources \((\d+) pairs staged\): (\d+) settled by "
                         r"the rules, (\d+) open for an analyst \(/conflicts/\)", line)
    assert found, line
    total, pairs, settled, open_ = map(int, found.groups())
    assert pairs == 12 and total == settled + open_ and open_ > 0 and settled > 0
    assert settled == Conflict.objects.filter(status="auto_resolved").count()
    assert open_ == Conflict.objects.filter(status="open").count()
