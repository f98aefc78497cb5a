"""Real worker processes: killed mid-batch (SIGKILL), and two of them racing on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from sync import capture
from sync.ids import label_prefix
from sync.models import SyncEvent, SyncRecord

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def worker_env(tmp_path, database_url, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PYTEST", "VECTOR_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="nightingale.settings", DATA_DIR=str(Path(settings.DATA_DIR)),
        DATABASE_URL=database_url, LANCEDB_DIR=str(tmp_path / "lancedb"), PINECONE_INDEX="test",
        NEO4J_URI=settings.NEO4J_URI, NEO4J_PASSWORD=settings.NEO4J_PASSWORD, SYNC_KICK_DRAIN="false",
        HF_HUB_OFFLINE="1",
    )
    env.update(extra)
    return env


def current_database_url() -> str:
    """The URL of the database this test runs on, for the worker processes it starts (SQLite's
    test database is a file; PostgreSQL's is pytest-django's test_ database on the same server)."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    auth = params["USER"] + (f":{params['PASSWORD']}" if params.get("PASSWORD") else "")
    return f"postgres://{auth}@{params['HOST']}:{params['PORT']}/{params['NAME']}"


def manage(*args, env):
    """A manage.py process, its stdout and stderr in files: a long-running one that logs more
    than a pipe holds (64 KiB) while nobody reads it would block on its next line."""
    out, err = (tempfile.TemporaryFile("w+") for _ in range(2))  # noqa: SIM115 — closed by outputs()
    proc = subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=env, stdout=out, stderr=err,
                            text=True)
    proc.files = (out, err)
    return proc


def outputs(proc: subprocess.Popen, timeout: float | None = None) -> tuple[str, str]:
    """Wait for a `manage` process (up to `timeout` seconds) and return its stdout and stderr."""
    proc.wait(timeout)
    texts = []
    for file in proc.files:
        file.seek(0)
        texts.append(file.read())
        file.close()
    return texts[0], texts[1]


def tail(proc: subprocess.Popen, size: int = 4000) -> str:
    """The end of a `manage` process's stderr so far (it may still run), for an assertion message.
    Read with pread: the process writes through the same file offset, which a seek would move."""
    fd = proc.files[1].fileno()
    end = os.fstat(fd).st_size
    return os.pread(fd, size, max(end - size, 0)).decode(errors="replace")


def actors(graph, count):
    rows = [{"uid": f"actor-{n:04d}", "name": f"Actor {n}",
             "description": f"Intrusion set {n} targeting energy and finance sectors with spear-phishing."}
            for n in range(count)]
    graph.import_entities("ThreatActor", rows, source="test")


def assert_exact(vectors, graph, count):
    ids = list(vectors.list_ids(label_prefix("ThreatActor")))
    assert len(ids) == len(set(ids)) == count  # every entity once, no duplicates
    assert vectors.stats().total == count
    versions = {e.uid: e.version for e in graph.scan_label("ThreatActor", None, count + 1)}
    fetched = vectors.fetch(ids)
    assert {r.metadata["uid"]: r.metadata["version"] for r in fetched.values()} == versions
    assert SyncRecord.objects.filter(label="ThreatActor", status="in_sync").count() == count


def test_a_worker_killed_mid_batch_loses_nothing(synced_graph, vectors, tmp_path):
    count = 400
    actors(synced_graph, count)
    assert capture.poll_once("test", overlap=0).enqueued == count
    env = worker_env(tmp_path, current_database_url(), SYNC_VISIBILITY_TIMEOUT="4")
    victim = manage("drain", "--until-empty", "--batch-size", "50", env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        done = SyncEvent.objects.filter(status="done").count()
        flying = SyncEvent.objects.filter(status="in_flight").count()
        if done >= 50 and flying:
            break
        assert victim.poll() is None, outputs(victim)
        time.sleep(0.05)
    else:
        pytest.fail("the worker never had a batch in flight after its first one")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    orphaned = SyncEvent.objects.filter(status="in_flight").count()
    assert orphaned > 0 and SyncEvent.objects.filter(status="done").count() < count

    time.sleep(4.5)  # the visibility timeout: the dead worker's lease runs out
    survivor = manage("drain", "--until-empty", "--batch-size", "50", env=env)
    out, err = outputs(survivor, timeout=300)
    assert survivor.returncode == 0, err
    assert SyncEvent.objects.exclude(status="done").count() == 0
    redelivered = SyncEvent.objects.filter(attempts=2).count()
    assert redelivered == orphaned
    assert_exact(vectors, synced_graph, count)


@pytest.mark.postgres
def test_two_workers_on_postgresql_never_apply_an_event_twice(synced_graph, vectors, tmp_path):
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.fail("TEST_POSTGRES_URL is not set: run the suite with bin/test, which starts PostgreSQL")
    env = worker_env(tmp_path, url)
    for args in (("migrate", "--noinput"), ("flush", "--noinput")):
        proc = manage(*args, env=env)
        _, err = outputs(proc, timeout=300)
        assert proc.returncode == 0, err
    count = 300
    actors(synced_graph, count)
    proc = manage("resync", "--label", "ThreatActor", env=env)
    out, err = outputs(proc, timeout=120)
    assert proc.returncode == 0 and f"queued {count} ThreatActor" in out, err

    workers = [manage("drain", "--until-empty", "--batch-size", "10", env=env) for _ in range(2)]
    results = [outputs(w, timeout=600) for w in workers]
    for w, (_, err) in zip(workers, results, strict=True):
        assert w.returncode == 0, err
    applied = [int(out.split("events: ")[1].split()[0]) for out, _ in results]
    assert sum(applied) == count and all(n > 0 for n in applied), applied  # both worked, no overlap

    with psycopg.connect(url.replace("postgres://", "postgresql://")) as db:
        rows = db.execute("SELECT status, attempts, count(*) FROM sync_syncevent GROUP BY 1, 2").fetchall()
    assert rows == [("done", 1, count)]  # each event claimed and applied exactly once
    ids = list(vectors.list_ids(label_prefix("ThreatActor")))
    assert len(ids) == len(set(ids)) == count
