import pytest

from sync.stores import graph_store, use_graph_store
from sync.stores.neo4j_graph import Neo4jGraphStore


@pytest.fixture
def unreachable_graph(neo4j_driver):
    real = graph_store()
    dead = Neo4jGraphStore("bolt://127.0.0.1:9", "neo4j", "whatever-password")
    use_graph_store(dead)
    yield dead
    dead.close()
    use_graph_store(real)


def test_it_reports_both_stores_reachable(client, viewer, neo4j_driver, vectors):
    client.force_login(viewer)  # the details are for a viewer or the metrics token (test_security_privilege)
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["services"]["graph"]["reachable"] is True
    assert body["services"]["graph"]["detail"].startswith("Neo4j 5.26")
    assert body["services"]["vector_store"]["reachable"] is True
    assert body["services"]["vector_store"]["kind"] == "LanceDB"


def test_it_reports_an_unreachable_graph(client, viewer, unreachable_graph, vectors):
    client.force_login(viewer)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["services"]["graph"]["reachable"] is False
    assert "unreachable" in body["services"]["graph"]["detail"]
    assert "whatever-password" not in response.content.decode()


def test_it_refuses_post(client):
    assert client.post("/healthz").status_code == 405
