"""The demo graph, loaded once into the real test Neo4j, and what the sync policy makes of it."""

from __future__ import annotations

import re
import time
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from sync.demo import graph as demo
from sync.stores import graph_store
from sync.stores.neo4j_graph import TOMBSTONE

LABELS_IN_DEMO = set(demo.DEMO_LABELS)
PRIVATE_PROSPECT_FIELDS = ("contact_name", "contact_email", "contact_phone", "address", "annual_revenue",
                           "deal_value", "internal_notes")


@pytest.fixture(scope="module")
def expected():
    return demo.build_demo_graph()


@pytest.fixture(scope="module")
def loaded(neo4j_driver, expected):
    """The demo, loaded once for the module through the management command (the slow part)."""
    with neo4j_driver.session(database=settings.NEO4J_DATABASE) as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS").consume()
    out = StringIO()
    started = time.monotonic()
    # The first conflicts: test_demo_activity.py; the initial sync's backfill: test_backfill.py (this
    # module-wide fixture has no database).
    call_command("load_demo", "--no-conflicts", "--no-backfill", stdout=out)
    return {"output": out.getvalue(), "seconds": time.monotonic() - started, "graph": graph_store()}


def query(cypher, **params):
    with graph_store().driver.session(database=settings.NEO4J_DATABASE) as session:
        return [record.data() for record in session.run(cypher, params)]


def all_entities(graph):
    """Every node of the graph as an Entity, label by label, paging like reconciliation does."""
    labels = [row["label"] for row in query("CALL db.labels() YIELD label RETURN label")]
    # Tombstones (left by APOC triggers when a test empties the graph) are the engine's bookkeeping,
    # not entities; every other label present is checked, whether the demo wrote it or not.
    for label in labels:
        if label == TOMBSTONE:
            continue
        after = None
        while page := graph.scan_label(label, after, 500):
            yield from page
            after = page[-1].uid


# --- building (no database) -------------------------------------------------------------------


def test_building_is_deterministic_and_seeded(expected):
    again = demo.build_demo_graph()
    assert again.nodes == expected.nodes and again.relationships == expected.relationships
    other = demo.build_demo_graph(seed=7)
    assert [p["name"] for p in other.nodes["Prospect"]] != [p["name"] for p in expected.nodes["Prospect"]]
    assert other.nodes["ThreatActor"] == expected.nodes["ThreatActor"]  # real data does not depend on it


def test_actors_come_from_the_galaxy_with_their_real_attributes(expected):
    actors = {row["name"]: row for row in expected.nodes["ThreatActor"]}
    assert len(actors) == len(demo.galaxy("threat-actor"))
    apt29 = actors["APT29"]
    assert apt29["uid"] == "apt29" and apt29["country"] == "Russia" and apt29["mitre_id"] == "G0016"
    assert "COZY BEAR" in apt29["aliases"] and apt29["motivation"] == "espionage"
    assert "Government" in apt29["target_sectors"] and "United States" in apt29["target_countries"]
    assert apt29["severity"] in ("high", "critical") and 0 < apt29["confidence"] <= 1
    assert actors["TA505"]["motivation"] == "financial"
    assert all(row["severity"] in demo.SEVERITY_RANK for row in actors.values())
    assert len({row["uid"] for row in actors.values()}) == len(actors)

    techniques = {row["uid"]: row for row in expected.nodes["Technique"]}
    phishing = techniques["T1566.001"]
    assert phishing["name"] == "Spearphishing Attachment" and "initial-access" in phishing["tactics"]
    assert "(Citation:" not in phishing["description"] and "](http" not in phishing["description"]
    malware = {row["name"]: row for row in expected.nodes["Malware"]}
    assert 0 < len(malware) <= demo.MALWARE_CAP
    assert (malware["BlackEnergy"]["uid"], malware["BlackEnergy"]["mitre_id"]) == ("blackenergy", "S0089")
    assert malware["Ryuk"]["malware_type"] == "ransomware"
    assert malware["QakBot"]["malware_type"] == "banking trojan"
    assert {row["malware_type"] for row in malware.values()} >= {"ransomware", "backdoor", "rat", "loader"}


def test_prospects_are_plausible_with_obviously_fake_private_fields(expected):
    prospects = expected.nodes["Prospect"]
    assert len(prospects) == demo.PROSPECT_COUNT == 67
    assert len({p["name"] for p in prospects}) == 67
    assert {p["sector"] for p in prospects} == set(demo.PROSPECT_SECTORS)
    for p in prospects:
        assert re.fullmatch(r"[a-z]+\.[a-z]+@[a-z0-9-]+\.example", p["contact_email"]), p["contact_email"]
        assert "555" in p["contact_phone"] or "7946 0" in p["contact_phone"]
        assert "Example Street" in p["address"]
        assert p["deal_value"] > 0 and p["annual_revenue"] > p["deal_value"]
        for private in ("contact_name", "contact_email", "contact_phone", "address"):
            assert str(p[private]) not in p["description"]


def test_every_prospect_gets_ten_artifacts_written_from_actors_that_target_it(expected):
    rels = expected.relationships
    targets: dict[str, set[str]] = {}
    for _, actor, _, prospect, props in rels["TARGETS"]:
        targets.setdefault(prospect, set()).add(actor)
        assert props["basis"] in ("sector", "country", "sector+country")
    actors = {a["uid"]: a for a in expected.nodes["ThreatActor"]}
    prospects = {p["uid"]: p for p in expected.nodes["Prospect"]}
    for _, actor, _, prospect, props in rels["TARGETS"]:
        a, p = actors[actor], prospects[prospect]
        assert ("sector" in props["basis"]) == (p["sector"] in a["target_sectors"])
        assert ("country" in props["basis"]) == (p["country"] in a["target_countries"])
    assert set(targets) == set(prospects)

    artifacts = expected.nodes["Artifact"]
    assert len(artifacts) == 670
    per_prospect: dict[str, list[dict]] = {}
    for art in artifacts:
        per_prospect.setdefault(art["prospect_uid"], []).append(art)
    assert {len(v) for v in per_prospect.values()} == {10}
    mentions = {(a, t) for _, a, label, t, _ in rels["MENTIONS"] if label == "ThreatActor"}
    for art in artifacts:
        if art["doc_type"] == "actor_profile":
            named = [u for u in targets[art["prospect_uid"]] if (art["uid"], u) in mentions]
            assert len(named) == 1 and actors[named[0]]["name"] in art["body"]
    assert {a["doc_type"] for a in artifacts} == {"actor_profile", "threat_brief", "exposure_summary"}


# --- loaded into Neo4j ------------------------------------------------------------------------


def test_the_load_writes_every_node_and_relationship_quickly(loaded, expected):
    graph = loaded["graph"]
    for label, rows in expected.nodes.items():
        assert graph.count_label(label) == len(rows), label
    assert graph.count_label("Prospect") == 67 and graph.count_label("Artifact") == 670
    assert graph.count_label("Contact") == graph.count_label("Deal") == 67
    assert graph.count_label("ThreatActor") == len(demo.galaxy("threat-actor"))
    rel_counts = {row["type"]: row["n"] for row in query(
        "MATCH ()-[r]->() RETURN type(r) AS type, count(r) AS n")}
    assert rel_counts == {rel: len(rows) for rel, rows in expected.relationships.items()}
    assert loaded["seconds"] < 60, loaded["output"]
    lines = loaded["output"].splitlines()
    assert lines[0].startswith("demo: loaded in ")
    assert "  Prospect" in loaded["output"] and any(re.fullmatch(r"\s+Artifact\s+670", ln) for ln in lines)


def test_the_graph_links_what_an_analyst_would_traverse(loaded):
    assert query("MATCH (p:Prospect) WHERE NOT (p)-[:HAS_CONTACT]->(:Contact) OR NOT (p)-[:HAS_DEAL]->(:Deal) "
                 "OR NOT (:ThreatActor)-[:TARGETS]->(p) RETURN count(p) AS n")[0]["n"] == 0
    assert query("MATCH (a:Artifact)-[:ABOUT]->(p:Prospect) WHERE a.prospect_uid = p.uid "
                 "RETURN count(a) AS n")[0]["n"] == 670
    assert query("MATCH (k:KEV)-[:LISTS]->(v:Vulnerability) WHERE k.uid = v.uid RETURN count(*) AS n")[0]["n"] == 42
    hafnium = query("MATCH (:ThreatActor {name: 'HAFNIUM'})-[:EXPLOITS]->(v:Vulnerability) RETURN v.uid AS uid")
    assert {row["uid"] for row in hafnium} == {"CVE-2021-26855", "CVE-2021-27065"}
    chain = query("MATCH (:ThreatActor {uid: 'apt29'})-[:USES]->(m:Malware)-[:USES]->(t:Technique) "
                  "RETURN count(DISTINCT t) AS n")[0]["n"]
    assert chain > 10
    assert query("MATCH (t:Technique {uid: 'T1566.001'})-[:SUBTECHNIQUE_OF]->(p:Technique) "
                 "RETURN p.uid AS uid")[0]["uid"] == "T1566"
    # Versions are not asserted as 1: with APOC triggers on, an emptied test graph leaves
    # tombstones whose versions a re-created node continues.
    nodes = query("MATCH (n:Prospect) RETURN n.version >= 1 AS versioned, n.source AS s, "
                  "n.updated_at IS NOT NULL AS stamped")
    assert {(row["versioned"], row["s"], row["stamped"]) for row in nodes} == {(True, "demo-crm", True)}


def test_private_fields_are_in_the_graph(loaded, expected):
    rows = query("MATCH (p:Prospect)-[:HAS_CONTACT]->(c:Contact) RETURN p, c")
    assert len(rows) == 67
    for row in rows:
        prospect, contact = row["p"], row["c"]
        for name in PRIVATE_PROSPECT_FIELDS:
            assert prospect.get(name), (prospect["uid"], name)
        assert prospect["contact_email"] == contact["email"] and prospect["contact_phone"] == contact["phone"]


def test_if_empty_leaves_a_loaded_graph_alone(loaded):
    before = query("MATCH (n) RETURN sum(n.version) AS versions, count(n) AS nodes")[0]
    out = StringIO()
    call_command("load_demo", "--if-empty", stdout=out)
    assert out.getvalue().strip() == "demo: the graph already has 67 prospects; nothing loaded"
    assert demo.load_demo(graph_store(), only_if_empty=True) == {}
    assert query("MATCH (n) RETURN sum(n.version) AS versions, count(n) AS nodes")[0] == before


def test_no_vector_document_of_the_demo_graph_carries_private_data(loaded):
    """Every node of the loaded graph through the real policy: nothing private may come out."""
    from sync.policy import ENGINE_KEYS, build_document, policy_for

    graph = loaded["graph"]
    private_values: set[str] = set()
    for row in query("MATCH (p:Prospect)-[:HAS_CONTACT]->(c:Contact) RETURN p, c"):
        prospect, contact = row["p"], row["c"]
        private_values |= {prospect[name] for name in ("contact_name", "contact_email", "contact_phone",
                                                       "address", "internal_notes")}
        private_values |= {contact["name"], contact["email"], contact["phone"]}
    assert len({v for v in private_values if "@" in v}) == 67
    fake_mail = re.compile(r"@[a-z0-9-]+\.example\b")

    seen: dict[str, int] = {}
    chunks = 0
    for entity in all_entities(graph):
        seen[entity.label] = seen.get(entity.label, 0) + 1
        document = build_document(entity)
        policy = policy_for(entity.label)
        if not policy.synced:
            assert document is None, f"{entity.label} is never synced but produced a document"
            continue
        allowed = set(policy.metadata_fields) | set(ENGINE_KEYS)
        assert document is not None and document.chunks, entity.key
        texts = [document.text]
        for chunk in document.chunks:
            chunks += 1
            extra = set(chunk.metadata) - allowed
            assert not extra, f"{entity.key} chunk {chunk.index} carries {sorted(extra)}"
            values = chunk.metadata.values()
            texts += [chunk.text, *(str(v) for v in values),
                      *(str(item) for v in values if isinstance(v, list) for item in v)]
        for text in texts:
            assert not fake_mail.search(text), f"{entity.key}: a private e-mail address leaked"
            leaked = [value for value in private_values if value in text]
            assert not leaked, f"{entity.key}: private values leaked: {leaked[:3]}"

    assert LABELS_IN_DEMO <= set(seen)  # every label of the demo was checked
    assert seen["Contact"] == seen["Deal"] == 67 and seen["Artifact"] == 670
    assert chunks > sum(n for label, n in seen.items() if policy_for(label).synced)  # long texts chunked
