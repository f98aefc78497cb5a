"""The Django database failing under the workers: SQLite locked by another process beyond the busy
timeout, and PostgreSQL (one of the suite's own) restarted in the middle of a batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from sync import worker
from sync.models import SyncEvent
from sync.observe.counters import counter_totals
from sync.stores import use_vector_store
from tests.consistency import ErrorCounted, assert_index_matches_graph
from tests.faults.inject import BeforeFirstWrite
from tests.faults.servers import PostgresServer, wait_until
from tests.faults.work import create_actors, edit_actor, poll

pytestmark = [pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parent.parent.parent
HOLD_SECONDS = 4.0


@pytest.fixture
def sqlite_busy_timeout():
    """SQLite's busy timeout at 1 s (SQLITE_BUSY_TIMEOUT's default is 30), for this process's
    connections, the threads' included."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's lock: the test database is not SQLite")
    options = connection.settings_dict["OPTIONS"]
    before = options["timeout"]
    connection.close()
    options["timeout"] = 1
    yield
    connection.close()
    options["timeout"] = before


def hold_write_lock(seconds: float = HOLD_SECONDS) -> subprocess.Popen:
    """Another process takes SQLite's write lock (BEGIN IMMEDIATE) and holds it for `seconds`;
    returns once it holds it."""
    script = ("import sqlite3, sys, time\n"
              "db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
              "db.execute('BEGIN IMMEDIATE')\n"
              "print('locked', flush=True)\n"
              "time.sleep(float(sys.argv[2]))\n"
              "db.execute('ROLLBACK')\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(connection.settings_dict["NAME"]), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def database_errors() -> float:
    return counter_totals()["errors"].get("database", 0)


def test_sqlite_locked_beyond_the_busy_timeout(fault_graph, vectors, sqlite_busy_timeout):
    """Another process holds SQLite's write lock for 4 s, past the busy timeout (1 s): first while
    a drain starts claiming, then while a batch, its vectors written, writes its records and acks.

    Expected: the claim fails (`database is locked`) with nothing claimed; the drain logs it,
    counts it (`sync_errors_total{kind="database"}`), keeps going and applies the work once the lock
    is gone. The batch that cannot write its records hands its events back to the queue as soon as
    the database takes writes again (no attempt counted), and the drain applies them once more
    (their vectors are in the store already: `unchanged`). Nothing is lost; the index equals the
    graph.
    """
    graph = fault_graph
    create_actors(graph, ["a0", "a1", "a2"])
    poll()
    errors = database_errors()
    holder = hold_write_lock()
    counts = worker.drain(idle_exit=0.5, flush=False, max_seconds=60)
    assert holder.wait(timeout=30) == 0
    assert (counts.upserted, counts.retried) == (3, 0)
    assert database_errors() > errors

    errors = database_errors()
    edit_actor(graph, "a1", "Edited while the database is locked.")
    create_actors(graph, ["b0"])
    poll()
    holders = []
    use_vector_store(BeforeFirstWrite(vectors, lambda: holders.append(hold_write_lock())))
    try:
        counts = worker.drain(idle_exit=0.5, flush=False, max_seconds=60)
    finally:
        use_vector_store(vectors)
    assert holders and holders[0].wait(timeout=30) == 0
    assert database_errors() > errors
    assert (counts.upserted, counts.unchanged, counts.retried) == (0, 2, 0)
    assert set(SyncEvent.objects.filter(uid__in=["a1", "b0"], status="done").values_list("attempts", flat=True)) == {1}
    assert_index_matches_graph(graph, vectors, visible=[ErrorCounted("database", errors)])


def run_python(env: dict, *args: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stderr[-4000:]}{done.stdout[-2000:]}"
    return done.stdout


@pytest.fixture
def own_postgres():
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


def test_postgresql_restarted_in_the_middle_of_a_batch(fault_graph, own_neo4j, own_postgres, tmp_path):
    """A `manage.py drain` worker on a PostgreSQL of the suite's own; PostgreSQL is restarted (a
    fast shutdown: every connection is terminated) while the worker has a batch in flight.

    Expected: the worker does not stop. The batch in flight meets the restart at its next database
    step: before its vectors are written (the fence, `queue.hold`), the batch fails as a whole with
    the database's error (each event's attempt counted, the error recorded) and is retried after
    its backoff; when it writes its records and acks, its events are handed back (no attempt
    counted) as soon as PostgreSQL answers again. Either way the failure is logged and counted
    (`sync_errors_total{kind="database"}`), and the worker goes on with a new connection to finish
    the queue (exit code 0). Every event ends done at most one failed attempt later, none dead; the
    index equals the graph.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PYTEST", "VECTOR_"))}
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=own_postgres.url, VECTOR_STORE="local",
               LANCEDB_DIR=str(tmp_path / "lancedb"), PINECONE_INDEX="faults", NEO4J_URI=own_neo4j.uri,
               NEO4J_PASSWORD=own_neo4j.password, SYNC_KICK_DRAIN="false", SYNC_VISIBILITY_TIMEOUT="600")
    run_python(env, "manage.py", "migrate", "--noinput")
    count = 120
    create_actors(fault_graph, [f"a{n:03d}" for n in range(count)])
    assert f"enqueued {count}" in run_python(env, "manage.py", "capture", "--seconds", "0.5")
    errors = database_errors()
    drain = subprocess.Popen([sys.executable, "manage.py", "drain", "--until-empty", "--batch-size", "10"], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pg = psycopg.connect(own_postgres.url.replace("postgres://", "postgresql://"), autocommit=True)

    def mid_batch():
        done, flying = pg.execute("SELECT count(*) FILTER (WHERE status = 'done'), "
                                  "count(*) FILTER (WHERE status = 'in_flight') FROM sync_syncevent").fetchone()
        assert drain.poll() is None, drain.stdout.read()
        return done >= 10 and flying > 0

    wait_until(mid_batch, "the worker to have a batch in flight after its first", timeout=180, every=0.02)
    pg.close()
    own_postgres.restart()
    out, _ = drain.communicate(timeout=300)
    assert drain.returncode == 0, out[-5000:]
    # What the worker meets depends on where the restart finds it: a connection terminated under it,
    # one refused while the server is down, or one closed before it could answer.
    seen = ("terminating connection due to administrator command", "Connection refused",
            "server closed the connection", "the database system is shutting down",
            "the database system is starting up")
    assert any(message in out for message in seen) and database_errors() > errors, out[-5000:]
    with psycopg.connect(own_postgres.url.replace("postgres://", "postgresql://")) as pg:
        assert pg.execute("SELECT status, max(attempts) FROM sync_syncevent GROUP BY status").fetchall() \
            in ([("done", 1)], [("done", 2)])
    report = run_python(env, "-m", "tests.faults.elsewhere", json.dumps({"errors_before": errors}))
    assert json.loads(report.splitlines()[-1]) == {"equal": True}, report
