"""The Redis and SQS brokers, with real django-q2 clusters as separate processes (and hosts).

Redis: two django-q2 clusters (`manage.py workers`), each with its own working directory and environment like two
hosts, share PostgreSQL, Redis, Neo4j and the vector store while foreign changes stream into the
graph; one is SIGKILLed mid-batch. SQS: a cluster on a local SQS endpoint (moto's server mode)
applies work, a failing task ends in the dead-letter queue after its retries, and a task whose
worker is killed is delivered again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from sync import queue
from sync.ids import label_prefix
from sync.models import SyncEvent
from tests.test_worker_processes import ROOT, actors, assert_exact, current_database_url, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def server(args: list[str], ready, what: str):
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or ready(), 30, what)
        if proc.poll() is not None:
            pytest.fail(f"{what} did not start: {proc.stderr.read()}")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def cluster(env: dict, home: Path) -> subprocess.Popen:
    """`manage.py workers` (the django-q2 cluster) as its own host: its own working directory and
    process group."""
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "qcluster.log").open("w")
    return subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "workers"], cwd=home, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def pids_in_tokens(tokens) -> list[int]:
    return [int(token.split(":")[1]) for token in tokens if token.count(":") >= 2]


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def manage(env, *args, timeout=300) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- Redis: two clusters as two hosts ------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.timeout(900)  # each host loads its model: over a minute apiece on a loaded machine
def test_two_clusters_on_redis_apply_every_change_once_and_survive_a_kill(synced_graph, vectors, tmp_path):
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.fail("TEST_POSTGRES_URL is not set: run the suite with bin/test, which starts PostgreSQL")
    port = free_port()
    redis_args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(tmp_path)]
    with server(redis_args, lambda: _answers(port), "redis-server"):
        common = dict(Q_BROKER="redis", REDIS_URL=f"redis://127.0.0.1:{port}/0", SYNC_KICK_DRAIN="true",
                      SYNC_DRAIN_WORKERS="2", Q_WORKERS="4", SYNC_BATCH_SIZE="10", SYNC_VISIBILITY_TIMEOUT="15",
                      SYNC_FLUSH_INTERVAL="1", CAPTURE_INTERVAL="0.5", OBSERVE_BESIDE_CAPTURE="false",
                      SECRET_KEY="broker-test-secret-key-0123456789abcdefghij")
        base = worker_env(tmp_path, url, **common)
        manage(base, "migrate", "--noinput")
        manage(base, "flush", "--noinput")
        manage(base, "setup_schedules")
        hosts = {}
        for name in ("host-a", "host-b"):
            home = tmp_path / name
            env = {**base, "DATA_DIR": str(home / "data"), "PROMETHEUS_MULTIPROC_DIR": str(home / "prometheus")}
            hosts[name] = cluster(env, home)
        try:
            _stream_kill_and_check(synced_graph, vectors, url, hosts)
        except BaseException:
            for name in hosts:  # what the clusters said, to see why
                print(f"--- {name} ---\n" + (tmp_path / name / "qcluster.log").read_text()[-6000:])
            raise
        finally:
            for proc in hosts.values():
                stop(proc)


def _stream_kill_and_check(graph, vectors, url, hosts):
    count = 80
    pg = psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True)
    groups = {proc.pid: name for name, proc in hosts.items()}
    owners: list[str] = []  # the host holding the change cursor's lease, sample by sample
    stop_stream = threading.Event()

    def stream():
        # Foreign changes through Cypher, like another tool's: creations, then edits, ~4 a second,
        # until the test stops it: a drain holds its slot while work keeps coming (up to
        # RUN_SECONDS), so the second host gets a slot only when one comes free with work left.
        n = 0
        while not stop_stream.is_set():
            uid = f"actor-{n % count:04d}"
            if n < count:
                query = "CREATE (:ThreatActor {uid: $uid, name: $uid, description: $d})"
            else:
                query = "MATCH (a:ThreatActor {uid: $uid}) SET a.description = $d"
            graph.driver.execute_query(query, uid=uid, d=f"Intrusion set {uid}, report {n // count}.",
                                       database_=graph.database)
            n += 1
            time.sleep(0.25)

    def sample():
        row = pg.execute("SELECT lease_owner FROM sync_changecursor WHERE name = 'neo4j'").fetchone()
        if row and row[0]:
            # A process that no longer exists is the killed host's: its lease runs out after the kill.
            owners.append(groups.get(group_of(int(row[0].split(":")[1])), "killed"))
        tokens = pg.execute("SELECT status, claim_token FROM sync_syncevent WHERE status IN ('done', 'in_flight')"
                            ).fetchall()
        by_host: dict[str, dict[str, int]] = {name: {"done": 0, "in_flight": 0} for name in hosts}
        for status, token in tokens:
            for pid in pids_in_tokens([token]):
                name = groups.get(group_of(pid))
                if name:
                    by_host[name][status] += 1
        return by_host

    writer = threading.Thread(target=stream, daemon=True)
    writer.start()
    try:
        # Both hosts apply batches; then the one caught mid-batch is SIGKILLed, its whole process group.
        def a_host_mid_batch_after_both_worked():
            seen = sample()
            if all(counts["done"] for counts in seen.values()):
                return next((name for name, counts in seen.items() if counts["in_flight"]), None)
            return None

        victim = wait_for(a_host_mid_batch_after_both_worked, 360, "both hosts to apply batches", every=0.05)
        before_kill = sample()
        os.killpg(hosts[victim].pid, signal.SIGKILL)
        hosts[victim].wait(timeout=10)
        killed_at = time.monotonic()
        survivor = next(name for name in hosts if name != victim)
        time.sleep(10)  # changes keep coming after the kill: the survivor must take them too
    finally:
        stop_stream.set()
        writer.join(timeout=30)

    def all_synced():
        sample()
        rows = dict(pg.execute("SELECT status, count(*) FROM sync_syncrecord WHERE label = 'ThreatActor' "
                               "GROUP BY status").fetchall())
        pending = pg.execute("SELECT count(*) FROM sync_syncevent WHERE status IN ('queued', 'in_flight')"
                             ).fetchone()[0]
        versions = {e.uid: e.version for e in graph.scan_label("ThreatActor", None, count + 1)}
        ids = list(vectors.list_ids(label_prefix("ThreatActor")))
        stored = {r.metadata["uid"]: r.metadata["version"] for r in vectors.fetch(ids).values()}
        return rows.get("in_sync") == len(versions) and pending == 0 and stored == versions

    wait_for(all_synced, 300, "every change to reach the vector store", every=1.0)
    took = time.monotonic() - killed_at
    after = sample()
    # Exactly once in effect: each entity once in the store, at its graph version; nothing dead.
    ids = list(vectors.list_ids(label_prefix("ThreatActor")))
    assert len(ids) == len(set(ids)) == count
    assert pg.execute("SELECT count(*) FROM sync_syncevent WHERE status = 'dead'").fetchone()[0] == 0
    # One poller at a time (one lease), held by a worker of one host; the killed host's lease runs
    # out and the survivor's poller takes the cursor over.
    assert owners and set(owners) <= set(hosts) | {"killed"}
    assert owners[-1] == survivor
    print(f"\nredis: {before_kill[victim]['done']} events applied by {victim} before it was killed mid-batch "
          f"({before_kill[victim]['in_flight']} in flight), {after[survivor]['done']} by {survivor}; "
          f"cursor held by {sorted(set(owners))}; all synced {took:.0f}s after the kill")
    pg.close()


# --- SQS: a cluster on a local SQS endpoint ---------------------------------------------------------

@pytest.fixture
def sqs(tmp_path):
    """A local SQS endpoint (moto's server mode) with a queue whose redrive policy sends a
    message to its dead-letter queue after two receives."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with server(args, lambda: _answers(port), "moto's SQS server"):
        client = boto3.client("sqs", region_name="us-east-1", endpoint_url=endpoint,
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        dlq = client.create_queue(QueueName="nightingale-test-dlq")["QueueUrl"]
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        client.create_queue(QueueName="nightingale-test", Attributes={
            "RedrivePolicy": f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "2"}}'})
        yield {"endpoint": endpoint, "client": client, "dlq": dlq}


def sqs_env(tmp_path, sqs, **extra) -> dict:
    env = worker_env(tmp_path, current_database_url(), **extra)
    env.update(DJANGO_SETTINGS_MODULE="tests.broker_settings", Q_BROKER="sqs", AWS_REGION="us-east-1",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL_SQS=sqs["endpoint"],
               SQS_QUEUE_NAME="nightingale-test", SQS_WAIT_SECONDS="1", Q_MAX_ATTEMPTS="0", Q_WORKERS="3",
               OBSERVE_BESIDE_CAPTURE="false", PYTHONPATH=str(ROOT),
               SECRET_KEY="broker-test-secret-key-0123456789abcdefghij")
    return env


def enqueue_task(env, func: str, *args) -> None:
    """Hand a task to the cluster through the SQS broker, from another process, as the web does."""
    code = ("import django; django.setup(); from django_q.tasks import async_task; "
            f"print(async_task({func!r}, *{list(args)!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_sqs_broker_runs_work_dead_letters_failures_and_redelivers_after_a_kill(
        synced_graph, vectors, tmp_path, sqs):
    env = sqs_env(tmp_path, sqs)
    actors(synced_graph, 20)
    queue.enqueue_many([queue.Work("ThreatActor", f"actor-{n:04d}") for n in range(20)])
    failing, slow = tmp_path / "failing.txt", tmp_path / "slow.txt"
    enqueue_task(env, "sync.tasks.drain_queue", 30)
    enqueue_task(env, "tests.broker_tasks.always_fails", str(failing))
    proc = cluster(env, tmp_path / "sqs-host")
    try:
        _sqs_checks(env, sqs, synced_graph, vectors, failing, slow)
    except BaseException:
        print("--- sqs-host ---\n" + (tmp_path / "sqs-host" / "qcluster.log").read_text()[-6000:])
        raise
    finally:
        stop(proc)


def _sqs_checks(env, sqs, synced_graph, vectors, failing, slow):
    from django_q.models import Task

    # Work handed out through SQS is done.
    wait_for(lambda: SyncEvent.objects.filter(status="done").count() == 20, 180, "the drain task over SQS")
    assert_exact(vectors, synced_graph, 20)
    # A failing task is retried (delivered again after its visibility timeout), then SQS's
    # redrive policy moves it to the dead-letter queue.
    client = sqs["client"]
    dead = wait_for(lambda: client.receive_message(QueueUrl=sqs["dlq"], WaitTimeSeconds=1).get("Messages"),
                    90, "the failing task in the dead-letter queue", every=1.0)
    assert len(dead) == 1
    assert len(failing.read_text().split()) == 2  # two attempts, as the redrive policy allows
    assert Task.objects.filter(func="tests.broker_tasks.always_fails", success=False).exists()
    # A worker killed mid-task: the message comes back after its visibility timeout.
    enqueue_task(env, "tests.broker_tasks.slow", str(slow), 3)
    started = wait_for(lambda: slow.exists() and slow.read_text().split(), 60, "the slow task to start")
    os.kill(int(started[1]), signal.SIGKILL)
    wait_for(lambda: "finished" in slow.read_text(), 90, "the slow task to be delivered again and finish")
    lines = slow.read_text().splitlines()
    assert lines[0].startswith("started") and lines[-1].startswith("finished")
    assert lines[0].split()[1] != lines[-1].split()[1]  # another worker process did it
    print(f"\nsqs: 20 events applied; the failing task dead-lettered after 2 attempts; the killed task "
      f"delivered again and finished by pid {lines[-1].split()[1]}")
