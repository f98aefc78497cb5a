"""/metrics: counters summed over every process (multiprocess mode), gauges read from the database."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sync import capture
from sync.models import Priority, SyncEvent
from tests.observe_helpers import waiting

ROOT = Path(__file__).resolve().parent.parent


def scrape(client, settings) -> dict[tuple[str, tuple], float]:
    settings.METRICS_TOKEN = "scrape-token-for-tests"
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-for-tests")
    assert response.status_code == 200
    values = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(scraped, name, **labels):
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db
def test_it_needs_a_login_or_the_token(client, settings):
    settings.METRICS_TOKEN = "right"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401


@pytest.mark.django_db
def test_gauges_come_from_the_database(client, settings, neo4j_driver, vectors):
    for _ in range(3):
        waiting(priority=Priority.HIGH, age=120)
    waiting(status=SyncEvent.Status.DEAD)
    scraped = scrape(client, settings)
    assert value(scraped, "sync_queue_depth", priority="high") == 3
    assert value(scraped, "sync_dead_letters") == 1
    assert value(scraped, "sync_oldest_unsynced_age_seconds", priority="high") >= 120
    assert value(scraped, "sync_freshness_breached", priority="high") == 1
    assert value(scraped, "sync_freshness_target_seconds", priority="low") == 86400
    assert value(scraped, "sync_service_up", service="graph") == 1
    assert value(scraped, "sync_metrics_readings_ok") == 1


@pytest.mark.django_db
def test_sync_status_prints_the_same_reading():
    from io import StringIO

    from django.core.management import call_command

    from tests.observe_helpers import finished

    waiting(priority=Priority.HIGH, age=120)
    waiting(priority=Priority.LOW, status=SyncEvent.Status.IN_FLIGHT)
    waiting(status=SyncEvent.Status.DEAD)
    for lag in (1.0, 2.0, 3.0):
        finished(lag)
    out = StringIO()
    call_command("sync_status", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "queue depth: 2 (high 1, medium 0, low 1)"
    assert lines[1].startswith("oldest unsynced change: 12") and lines[1].endswith("s ago")
    assert lines[2] == "lag over the last hour: p50 2.00s, p95 2.90s (3 samples)"
    assert lines[3] == "dead letters: 1"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_work_done_by_a_separate_worker_process_moves_lag_and_counters(client, settings, synced_graph, vectors,
                                                                       tmp_path):
    from tests.test_worker_processes import actors, current_database_url, worker_env

    before = scrape(client, settings)
    count = 30
    actors(synced_graph, count)
    assert capture.poll_once("test", overlap=0).enqueued == count
    env = worker_env(tmp_path, current_database_url())
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(settings.PROMETHEUS_MULTIPROC_DIR)
    worker = subprocess.Popen([sys.executable, "manage.py", "drain", "--until-empty"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err
    assert SyncEvent.objects.filter(status="done").count() == count

    after = scrape(client, settings)
    moved = {name: value(after, name, **labels) - value(before, name, **labels) for name, labels in (
        ("sync_lag_seconds_count", {"priority": "medium"}),
        ("sync_events_applied_total", {"outcome": "upserted"}),
        ("sync_embedded_chunks_total", {}),
    )}
    assert moved == {"sync_lag_seconds_count": count, "sync_events_applied_total": count,
                     "sync_embedded_chunks_total": count}
    assert value(after, "sync_lag_seconds_sum", priority="medium") > value(before, "sync_lag_seconds_sum",
                                                                           priority="medium")
    # The counts came from the worker's own files, left behind in the directory both processes share.
    assert (Path(settings.PROMETHEUS_MULTIPROC_DIR) / f"histogram_{worker.pid}.db").exists()
    assert value(after, "sync_window_lag_seconds", priority="medium", quantile="95") > 0


def test_files_of_exited_processes_are_folded_without_changing_a_total(settings, tmp_path):
    from sync.observe import counters

    settings.PROMETHEUS_MULTIPROC_DIR = tmp_path
    script = ("import os, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'nightingale.settings'; django.setup(); "
              "from sync.observe.counters import SYNC_ERRORS, SYNC_LAG, EMBEDDED_CHUNKS; "
              "SYNC_ERRORS.labels('store').inc(3); SYNC_LAG.labels('high').observe(2.5); EMBEDDED_CHUNKS.inc(7)")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": ""}
    for _ in range(3):  # three short-lived processes, as recycled workers leave them
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=120)
    before = counters.counter_totals()
    exposition = counters.multiprocess_registry()
    lag_count = _lag_count(exposition)
    assert before["errors"]["store"] == 9 and before["embedded"] == 21 and lag_count == 3
    assert len(list(tmp_path.glob("*_[0-9]*.db"))) >= 6

    assert counters.fold_dead_processes() >= 6
    assert not list(tmp_path.glob("*_[0-9]*.db"))
    assert counters.counter_totals() == before and _lag_count(counters.multiprocess_registry()) == 3
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=120)
    counters.fold_dead_processes()  # into the existing archive
    assert counters.counter_totals()["errors"]["store"] == 12 and _lag_count(counters.multiprocess_registry()) == 4


def _lag_count(registry):
    return sum(s.value for f in registry.collect() for s in f.samples
               if s.name == "sync_lag_seconds_count" and s.labels == {"priority": "high"})
