"""Shared fixtures: the real test Neo4j (started by bin/test), a clean graph per test; the
Hypothesis profiles (HYPOTHESIS_PROFILE=ci, the default, keeps the suite within CI's budget;
`long` is for runs by hand)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from sync.stores import graph_store, reset_stores, use_vector_store

# No deadline: the machines are shared and noisy (timing is the benchmarks' job, not the tests').
hypothesis_settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
hypothesis_settings.register_profile(
    "long", max_examples=2000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def neo4j_driver():
    """The test Neo4j's driver. Fails (never skips) when the server does not answer.

    Tests wipe the graph, so one pytest session at a time may use a test server: the session
    holds an exclusive lock named by the server's address, and a second session waits for it
    (two sessions on one server would wipe each other's nodes mid-test)."""
    port = urlsplit(settings.NEO4J_URI).port or 7687
    lock = open(Path(tempfile.gettempdir()) / f"nightingale-test-neo4j-{port}.lock", "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for another test session using the Neo4j at {settings.NEO4J_URI} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    store = graph_store()
    try:
        store.ping()
    except Exception as exc:
        pytest.fail(
            f"the test Neo4j at {settings.NEO4J_URI} does not answer ({exc}); "
            "run the suite with bin/test, which starts it"
        )
    yield store.driver
    reset_stores()
    lock.close()


@pytest.fixture
def graph(neo4j_driver):
    """The graph store on an empty database (Community has one user database: clean, don't create)."""
    with neo4j_driver.session(database=settings.NEO4J_DATABASE) as session:
        # CALL ... IN TRANSACTIONS needs an auto-commit transaction, hence session.run.
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS").consume()
        # The APOC delete trigger records tombstones for the nodes just wiped: wipe those too.
        session.run("MATCH (t:_SyncTombstone) DELETE t").consume()
    yield graph_store()


@pytest.fixture
def vectors(tmp_path):
    """A fresh LanceDB vector store, installed as the process's vector store."""
    from sync.stores.local_store import LanceVectorStore

    store = LanceVectorStore(tmp_path / "lancedb", table="test", dimension=384)
    use_vector_store(store)
    yield store
    use_vector_store(None)


@pytest.fixture(scope="session")
def apoc_triggers(neo4j_driver):
    """Schema and APOC triggers for every synced label, installed once per test session."""
    from sync.policy import synced_labels

    store = graph_store()
    labels = synced_labels()
    store.ensure_schema(labels)
    assert store.install_triggers(labels), "the test Neo4j must have APOC"
    store.wait_for_triggers()
    yield labels
    store.remove_triggers()
    store.wait_for_triggers()


@pytest.fixture
def synced_graph(graph, apoc_triggers):
    """An empty graph with the schema and APOC triggers in place."""
    return graph


# --- dashboard users, one per role (dashboard/access.py) ------------------------------------

def make_user(username: str, role: str | None, password: str = "correct horse battery staple"):
    from django.contrib.auth.models import User

    from dashboard.access import assign_role

    user = User.objects.create_user(username, password=password)
    if role:
        assign_role(user, role)
    return user


@pytest.fixture
def viewer(db):
    return make_user("vera-viewer", "viewer")


@pytest.fixture
def analyst_user(db):
    return make_user("ana-analyst", "analyst")


@pytest.fixture
def admin_user(db):
    return make_user("adam-admin", "admin")
