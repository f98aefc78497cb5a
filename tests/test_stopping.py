"""Real processes and real signals: SIGTERM to a process group (what systemd sends) stops the
workers and the web server promptly, and a batch cut short by a signal or by django-q2's task
timeout goes back to the queue without an attempt counted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Count
from django_q.tasks import async_task

from sync import capture
from sync.models import ReconcileRun, SyncEvent
from tests.test_worker_processes import ROOT, actors, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

STOP_WITHIN_SECONDS = 30  # the promise: systemd's SIGKILL never has to come


def start(args: list[str], env: dict, tmp_path: Path) -> subprocess.Popen:
    """A process in a process group of its own, its output in a file (a full pipe would block it).
    Opened to append: the process writes through the file offset it shares with us, which `output`
    moves while it runs; O_APPEND makes every write land at the end however it was moved."""
    log = open(tmp_path / f"{Path(args[0]).name}-{len(list(tmp_path.glob('*.log')))}.log", "a+")  # noqa: SIM115
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> str:
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read()


def workers(env: dict, tmp_path: Path) -> subprocess.Popen:
    return start([sys.executable, "manage.py", "workers"], env, tmp_path)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_until(condition, what: str, timeout: float = 240, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended before {what}: {output(proc)[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}" + (f": {output(proc)[-5000:]}" if proc else ""))


def stop_group(proc: subprocess.Popen) -> list[int]:
    """SIGTERM to the whole process group; the processes still alive STOP_WITHIN_SECONDS later."""
    pgid = os.getpgid(proc.pid)
    assert len(group_members(pgid)) > 1  # the children are in the group too
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WITHIN_SECONDS
    while time.monotonic() < deadline and (proc.poll() is None or group_members(pgid)):
        time.sleep(0.2)
    left = group_members(pgid)
    if left:
        os.killpg(pgid, signal.SIGKILL)  # leave nothing behind for the next test
    proc.wait(timeout=10)
    return left


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def database_url() -> str:
    return f"sqlite:///{connection.settings_dict['NAME']}"


def assert_handed_back_uncounted(count: int) -> None:
    """Nothing in flight or dead; what was not applied is queued as if never claimed."""
    statuses = dict(SyncEvent.objects.values_list("status").annotate(n=Count("id")))
    assert statuses.get("in_flight", 0) == 0 and statuses.get("dead", 0) == 0, statuses
    queued = SyncEvent.objects.filter(status="queued")
    assert queued.exists(), statuses  # the signal came mid-batch: something was left to do
    assert set(queued.values_list("attempts", flat=True)) == {0}
    assert not queued.exclude(last_error="").exists(), list(queued.values_list("last_error", flat=True)[:3])
    assert sum(statuses.values()) == count


def claimed_batch_in_flight() -> bool:
    return SyncEvent.objects.filter(status="in_flight").exists()


def test_sigterm_to_the_clusters_process_group_stops_it_and_hands_the_batch_back(synced_graph, vectors, tmp_path):
    count = 400
    actors(synced_graph, count)
    assert capture.poll_once("test", overlap=0).enqueued == count
    env = worker_env(tmp_path, database_url(), SYNC_BATCH_SIZE="200", SYNC_MAX_BATCH_CHUNKS="1000")
    cluster = workers(env, tmp_path)
    try:
        async_task("sync.tasks.drain_queue", 95, group="sync-drain")
        wait_until(claimed_batch_in_flight, "a batch in flight", proc=cluster)
        time.sleep(1)  # well inside the batch: it embeds 200 texts
        left = stop_group(cluster)
    finally:
        kill_group(cluster)
    log = output(cluster)
    assert left == [], f"still running {STOP_WITHIN_SECONDS} s after SIGTERM: {left}\n{log[-3000:]}"
    assert "has stopped" in log, log[-3000:]
    assert_handed_back_uncounted(count)


def test_sigterm_to_the_main_process_alone_stops_the_workers_too(synced_graph, vectors, tmp_path):
    """`kill <pid>` (docker stop, bin/serve passing it on): the sentinel tells the workers."""
    count = 400
    actors(synced_graph, count)
    assert capture.poll_once("test", overlap=0).enqueued == count
    env = worker_env(tmp_path, database_url(), SYNC_BATCH_SIZE="200", SYNC_MAX_BATCH_CHUNKS="1000")
    cluster = workers(env, tmp_path)
    try:
        async_task("sync.tasks.drain_queue", 95, group="sync-drain")
        wait_until(claimed_batch_in_flight, "a batch in flight", proc=cluster)
        time.sleep(1)
        cluster.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WITHIN_SECONDS
        while time.monotonic() < deadline and group_members(cluster.pid):
            time.sleep(0.2)
        left = group_members(cluster.pid)
    finally:
        kill_group(cluster)
    assert left == [], output(cluster)[-3000:]
    assert_handed_back_uncounted(count)


def test_a_task_past_its_timeout_hands_its_batch_back_uncounted(synced_graph, vectors, tmp_path):
    """django-q2's timeout (a SystemExit raised in the worker) mid-batch: the events are queued
    again with no attempt counted, never dead-lettered with a misleading error."""
    count = 1000
    # One batch of every event, each a full chunk of text, embedded in one go: a minute or more of
    # work, far past the task's timeout (which leaves time to load the model and claim).
    words = " ".join(f"word{n % 97} campaign{n % 13} exploit{n % 7}" for n in range(80))
    synced_graph.import_entities("ThreatActor", [{"uid": f"actor-{n:04d}", "name": f"Actor {n}",
                                                  "description": f"Actor {n}: {words}"} for n in range(count)],
                                 source="test")
    assert capture.poll_once("test", overlap=0).enqueued == count
    env = worker_env(tmp_path, database_url(), SYNC_BATCH_SIZE="1000", SYNC_MAX_BATCH_SIZE="1000",
                     SYNC_MAX_BATCH_CHUNKS="5000")
    cluster = workers(env, tmp_path)
    try:
        async_task("sync.tasks.drain_queue", 95, group="sync-drain", q_options={"timeout": 20})
        wait_until(claimed_batch_in_flight, "the batch in flight", proc=cluster)
        wait_until(lambda: not claimed_batch_in_flight(), "the timed-out batch handed back", proc=cluster)
        assert not SyncEvent.objects.filter(status="done").exists()  # it was cut short, not finished
        left = stop_group(cluster)
    finally:
        kill_group(cluster)
    assert left == [], output(cluster)[-3000:]
    assert_handed_back_uncounted(count)
    from django_q.models import Task

    task = Task.objects.get(func="sync.tasks.drain_queue")
    assert not task.success and "TimeoutException" in task.result


def delete_in_small_transactions(graph) -> None:
    """Each delete transaction of more than a few nodes reads every tombstone (the trigger's
    scan): removing them as we go keeps the shared wipe of the next test within Neo4j's memory."""
    with graph.driver.session(database=graph.database) as session:
        while session.run("MATCH (n:ThreatActor) WITH n LIMIT 1000 DETACH DELETE n RETURN count(*) AS n").single()["n"]:
            session.run("MATCH (t:_SyncTombstone) DELETE t").consume()


@pytest.mark.parametrize("interruption", ["sigterm", "timeout"])
def test_an_interrupted_reconciliation_ends_failed(synced_graph, vectors, tmp_path, interruption, request):
    # Many entities with no vectors: the full run has plenty to compare and repair.
    for start in range(0, 20000, 2000):
        synced_graph.import_entities("ThreatActor", [{"uid": f"actor-{n:05d}", "name": f"Actor {n}"}
                                                     for n in range(start, start + 2000)], source="test")
    request.addfinalizer(lambda: delete_in_small_transactions(synced_graph))
    env = worker_env(tmp_path, database_url())
    cluster = workers(env, tmp_path)
    try:
        run = ReconcileRun.objects.create(mode=ReconcileRun.Mode.FULL, status=ReconcileRun.Status.QUEUED,
                                          trigger=ReconcileRun.Trigger.UI)
        options = {"timeout": 1} if interruption == "timeout" else {}
        async_task("sync.tasks.run_reconciliation", run.pk, group="reconcile", q_options=options)

        def running() -> bool:
            run.refresh_from_db()
            return run.status != ReconcileRun.Status.QUEUED

        wait_until(running, "the run started", proc=cluster)
        if interruption == "sigterm":
            assert run.status == ReconcileRun.Status.RUNNING
            left = stop_group(cluster)
            assert left == []
        else:
            wait_until(lambda: running() and run.status != ReconcileRun.Status.RUNNING, "the run ended",
                       proc=cluster)
    finally:
        kill_group(cluster)
    run.refresh_from_db()
    assert run.status == ReconcileRun.Status.FAILED, (run.status, run.error)
    assert run.finished_at is not None and run.error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bin_serve_stops_web_and_workers_on_sigterm_to_its_group(synced_graph, vectors, tmp_path):
    """What bin/run ends with: gunicorn and the cluster under one process group, as systemd runs it."""
    count = 400
    actors(synced_graph, count)
    assert capture.poll_once("test", overlap=0).enqueued == count
    port = free_port()
    env = worker_env(tmp_path, database_url(), PORT=str(port), WEB_WORKERS="2", SYNC_BATCH_SIZE="200",
                     SYNC_MAX_BATCH_CHUNKS="1000")
    serve = start(["bin/serve"], env, tmp_path)
    try:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    return response.status == 200
            except urllib.error.HTTPError:
                return True  # 503 names a store that does not answer: the web server does
            except OSError:
                return False

        wait_until(answers, "the web server", proc=serve)
        # Each web worker has the model before it accepts a request (nightingale/gunicorn_conf.py).
        wait_until(lambda: output(serve).count(": embedding model ready") == 2, "both web workers' model",
                   proc=serve)
        async_task("sync.tasks.drain_queue", 95, group="sync-drain")
        wait_until(claimed_batch_in_flight, "a batch in flight", proc=serve)
        time.sleep(1)
        left = stop_group(serve)
    finally:
        kill_group(serve)
    assert left == [], f"still running {STOP_WITHIN_SECONDS} s after SIGTERM: {left}\n{output(serve)[-3000:]}"
    assert not answers()
    assert_handed_back_uncounted(count)
