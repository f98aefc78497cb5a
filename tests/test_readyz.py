"""/readyz: database, Neo4j, vector store, workers' heartbeats and schedules, checked live.

The Neo4j that is stopped and started here is a throwaway one of this test's own (its own port and
directory, via tools/neo4j/neo4jctl.py): the suite's shared test Neo4j keeps running.
"""

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from sync.models import ChangeCursor
from sync.observe.models import Alert, Heartbeat
from sync.stores import graph_store, use_graph_store
from sync.stores.neo4j_graph import Neo4jGraphStore

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "throwaway-neo4j"
pytestmark = pytest.mark.django_db


@pytest.fixture
def running(db):
    """Heartbeats and schedules as a running cluster leaves them."""
    call_command("setup_schedules", stdout=open(os.devnull, "w"))  # noqa: SIM115
    Heartbeat.beat("observer", "test")
    ChangeCursor.objects.create(name="neo4j", polled_at=timezone.now())


@pytest.fixture
def client(client, viewer):
    """The details of /readyz are for a viewer or the metrics token (tests/test_security_privilege.py)."""
    client.force_login(viewer)
    return client


def test_it_is_ready_when_everything_answers(client, running, neo4j_driver, vectors):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "graph", "vector_store", "workers", "schedules"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["graph"]["detail"].startswith("Neo4j at bolt://")


def test_stale_heartbeats_and_late_schedules_make_it_not_ready(client, running, neo4j_driver, vectors, settings):
    settings.HEARTBEAT_MAX_AGE, settings.ALERT_WEBHOOK_URL = 60, ""
    ChangeCursor.objects.update(polled_at=timezone.now() - timedelta(minutes=10))
    Heartbeat.objects.update(at=timezone.now() - timedelta(minutes=10))
    Schedule.objects.filter(name="sync: drain queue").update(next_run=timezone.now() - timedelta(minutes=10))
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert not checks["workers"]["ok"] and "change capture polled 10 min ago" in checks["workers"]["detail"]
    assert checks["schedules"]["detail"] == "late: sync: drain queue by 10 min"
    # A probe only reads; the observer that stopped is reported by the upkeep task.
    assert not Alert.objects.exists()
    assert run_task("upkeep")["observer"]["opened"] == ["workers_heartbeat"]
    assert Alert.objects.get(status="open").rule == "workers_heartbeat"


def test_no_schedules_is_not_ready(client, neo4j_driver, vectors):
    Heartbeat.beat("observer", "test")
    ChangeCursor.objects.create(name="neo4j", polled_at=timezone.now())
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["schedules"]["detail"] == "no schedules: run manage.py setup_schedules"


def test_it_refuses_post(client, db):
    assert client.post("/readyz").status_code == 405


def run_task(task: str) -> dict:
    """A task of sync.tasks, run here as a worker would."""
    from sync import tasks

    return getattr(tasks, task)()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Throwaway:
    """A Neo4j of the test's own, started and stopped with tools/neo4j/neo4jctl.py."""

    def __init__(self, directory: Path):
        self.uri = f"bolt://127.0.0.1:{free_port()}"
        home = directory / "home"
        shared = ROOT / "var" / "test-neo4j" / "home"
        if shared.is_dir():  # the jars bin/test's Neo4j was given: no Maven run needed
            home.parent.mkdir(parents=True, exist_ok=True)
            home.symlink_to(shared)
        self.env = {**os.environ, "NEO4J_URI": self.uri, "NEO4J_PASSWORD": PASSWORD,
                    "NEO4J_LOCAL_DIR": str(directory), "NEO4J_HEAP": "256m"}

    def ctl(self, command: str) -> None:
        done = subprocess.run([sys.executable, "tools/neo4j/neo4jctl.py", command], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr + done.stdout


@pytest.mark.slow
def test_it_goes_not_ready_when_neo4j_stops_and_recovers_when_it_starts(client, running, vectors, tmp_path,
                                                                         settings):
    settings.HEALTH_CACHE_SECONDS = 0  # each call checks the stores (the probes reuse a check 10 s by default)
    server = Throwaway(tmp_path / "neo4j")
    server.ctl("start")
    real = graph_store()
    store = Neo4jGraphStore(server.uri, "neo4j", PASSWORD)
    use_graph_store(store)
    try:
        assert client.get("/readyz").status_code == 200
        server.ctl("stop")
        down = client.get("/readyz")  # the first check after the stop
        assert down.status_code == 503
        assert down.json()["checks"]["graph"]["ok"] is False
        assert down.json()["checks"]["vector_store"]["ok"] is True
        assert PASSWORD not in down.content.decode()
        server.ctl("start")
        # The cluster kept running meanwhile: it beat, polled and ran its schedules (three Neo4j
        # starts take minutes on a loaded machine, past SCHEDULE_GRACE of the fixture's schedules).
        Heartbeat.beat("observer", "test")
        ChangeCursor.objects.update(polled_at=timezone.now())
        Schedule.objects.filter(next_run__lt=timezone.now()).update(next_run=timezone.now())
        up = client.get("/readyz")  # the first check after the start
        assert up.status_code == 200, up.json()
    finally:
        use_graph_store(real)
        store.close()
        server.ctl("stop")
