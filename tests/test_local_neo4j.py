"""The test suite talks to a real Neo4j 5.26 over Bolt, with authentication and APOC."""

import pytest
from django.conf import settings
from neo4j import GraphDatabase
from neo4j.exceptions import AuthError


def test_it_creates_and_reads_back_a_node(graph, neo4j_driver):
    neo4j_driver.execute_query("CREATE (:ThreatActor {uid: $uid, name: $name})", uid="apt29", name="APT29")
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (a:ThreatActor {uid: $uid}) RETURN a.name AS name", uid="apt29"
    )
    assert [r["name"] for r in records] == ["APT29"]


def test_it_runs_neo4j_5_26_community(graph):
    assert graph.ping().startswith("Neo4j 5.26.")


def test_it_requires_authentication(neo4j_driver):
    with GraphDatabase.driver(settings.NEO4J_URI, auth=(settings.NEO4J_USER, "wrong-password")) as driver:
        with pytest.raises(AuthError):
            driver.verify_connectivity()


def test_it_has_the_apoc_trigger_procedures(neo4j_driver):
    records, _, _ = neo4j_driver.execute_query(
        "SHOW PROCEDURES YIELD name WHERE name STARTS WITH 'apoc.trigger.' RETURN collect(name) AS names"
    )
    names = set(records[0]["names"])
    assert {"apoc.trigger.install", "apoc.trigger.drop", "apoc.trigger.list"} <= names
