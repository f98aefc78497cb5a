"""Fixtures of the fault suite: its own Neo4j (one per session, on a free port: the cases stop and
kill it), a clean graph on it per case, installed as the process's graph store, and settings that
keep retries and alert hysteresis short enough for a test.

The suite shares no server with the rest of the tests: bin/test runs it beside the short soak
(tests/test_soak.py), in a pytest session of its own."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from sync.stores import graph_store, use_graph_store
from tests.faults.servers import TRIGGER_WAIT, Neo4jServer


def prepare(store) -> None:
    """Schema and the APOC trigger on the suite's Neo4j (stored there: they survive restarts)."""
    from sync.policy import synced_labels

    labels = synced_labels()
    store.ensure_schema(labels)
    assert store.install_triggers(labels), "the fault suite's Neo4j must have APOC"
    assert store.wait_for_triggers(TRIGGER_WAIT)


@pytest.fixture(scope="session")
def own_neo4j():
    """The suite's own Neo4j. A server a previous run left behind in the same directory is killed first."""
    server = Neo4jServer(Path(django_settings.DATA_DIR) / "faults-neo4j")
    server.kill()
    server.start()
    store = server.store()
    try:
        prepare(store)
    finally:
        store.close()
    yield server
    server.kill()


@pytest.fixture
def fault_graph(own_neo4j, settings):
    """An empty graph on the suite's Neo4j, installed as the process's graph store."""
    store = own_neo4j.store()
    if own_neo4j.pid is None:  # a case that failed while the server was down
        own_neo4j.start(store)
    with store.driver.session(database=store.database) as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS").consume()
        session.run("MATCH (t:_SyncTombstone) DELETE t").consume()
    shared = graph_store()
    use_graph_store(store)
    settings.SYNC_BACKOFF_BASE, settings.SYNC_BACKOFF_MAX = 0.05, 0.5
    settings.ALERT_RESOLVE_AFTER, settings.ALERT_WEBHOOK_URL, settings.ALERT_EMAIL_TO = 0, "", []
    yield store
    use_graph_store(shared)
    with contextlib.suppress(Exception):
        store.close()


def pytest_collection_modifyitems(items):
    """Every case here starts or breaks servers: all are `slow`."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)
